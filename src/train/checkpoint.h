// Training checkpoints: one directory per save, <out>/checkpoints/step-00001000/, holding
//   model.safetensors      the weights, official layout (loads in other tools as it is)
//   ema.safetensors        the EMA weights, official layout (when EMA is on)
//   optimizer.safetensors  AdamW's m and v per parameter ("adam_m.<key>", "adam_v.<key>"); under
//                          ZeRO-1 one file per rank instead, optimizer-RRRRR-of-WWWWW.safetensors,
//                          each with the parameters of its rank's range, in the same form
//   state.json             step, batches consumed (the data position), counters, seed, the world
//                          size and global batch, the optimizer files, and the data's sample count
//                          and fingerprint (a resume says when they changed)
//   config.yaml            the resolved config of the run
// written into step-...tmp, every file fsynced, then renamed into place (by rank 0, after every
// rank wrote its part) and the parent fsynced: a crash (kill -9 included) leaves the previous
// checkpoints as they were and at most a .tmp directory, which `latest` ignores and the next run
// removes. Only the newest `keep` are kept. Every rank of a data-parallel run calls save and load
// (they hold collectives); a load takes each rank's parameters from whichever optimizer file has
// them, so a run resumes at another world size, with or without ZeRO.
// Tested by tests/test_train.c (resume is bit-identical; a kill during a write) and
// tests/test_dist.c (2 ranks, ZeRO, 2 -> 1 rank).
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/model.h"
#include "core/params.h"
#include "core/rng.h"
#include "io/weights.h"

typedef struct ldmc_train_state {
    int64_t step;          // optimizer steps done
    int64_t batches;       // batches this rank has consumed: where the data resumes
    int64_t skipped_steps; // steps skipped for a non-finite loss or gradient
    int64_t images;        // images trained on (metrics.jsonl's count)
    uint64_t seed;
    // The data trained on: its sample count and ldmc_dataset_fingerprint (0, 0: not recorded).
    int64_t data_samples;
    uint64_t data_fingerprint;
    // The run's ranks and global batch (world x batch size) when saved (1 and 0 when not
    // recorded), and how many optimizer files the checkpoint has (1, or the ranks under ZeRO).
    int64_t world, global_batch, optimizer_files;
} ldmc_train_state;

// The checkpoint's model part: the model trained and, when they are trained too, the text
// encoders (`extra`, up to 2), all in one official-layout file each for weights, EMA and
// optimizer state.
typedef struct ldmc_checkpoint_model {
    const ldmc_model *model;
    bool ema; // the EMA buffer exists and is saved
    const ldmc_model *extra[2];
    int n_extra;
    // ZeRO-1: each rank saves the optimizer state of its range, and rank 0 the EMA gathered
    // whole into ema_full[k] (the model's, then the extra ones', in table layout)
    bool zero;
    const float *ema_full[3];
} ldmc_checkpoint_model;

int ldmc_checkpoint_save(const char *out_dir, const ldmc_checkpoint_model *m,
                         const ldmc_train_state *st, const char *config_yaml, int keep,
                         char *saved_path, ldmc_err *err);
// (saved_path, when not NULL, receives the directory written: room for 4200 bytes.)
// The newest complete checkpoint under <out>/checkpoints, into `path`; -1 when there is none.
int ldmc_checkpoint_latest(const char *out_dir, char *path, size_t size, ldmc_err *err);
// Loads weights, EMA, optimizer state and counters from a checkpoint directory. Every field of
// state.json is checked (type, whole number, range, consistency) and a bad one named.
int ldmc_checkpoint_load(const char *dir, ldmc_checkpoint_model *m, ldmc_train_state *st,
                         ldmc_err *err);
// Removes <out>/checkpoints/*.tmp left by a crash; returns how many.
int ldmc_checkpoint_clean(const char *out_dir);
