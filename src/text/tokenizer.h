// The CLIP byte-level BPE tokenizer of SDXL's two text encoders, from the vocabulary files users
// have: OpenAI's bpe_simple_vocab_16e6.txt.gz, or a diffusers folder's tokenizer/ (merges.txt,
// with vocab.json checked against it). Two conventions, one per encoder:
//   - LDMC_TOKENS_HF (CLIP ViT-L, HF's CLIPTokenizer as generative-models calls it): the literal
//     special tokens are split out of the raw text first; each piece is cleaned (ftfy's
//     deterministic fixes, whitespace, lower case); [bos] + up to 75 tokens + [eos], padded with
//     eos (49407);
//   - LDMC_TOKENS_OPEN_CLIP (OpenCLIP bigG, open_clip.tokenize): cleaned, HTML-unescaped twice,
//     whitespace and lower case; [sot] + tokens + [eot], cut to 77 with eot last, padded with 0.
// The cleanup is ftfy's fix_text without its heuristic mojibake repair (docs/text.md says what
// differs); Unicode comes from utf8proc (NFC, categories, case mapping).
// Tested by tests/test_text.c against tests/ref/clip_tokenizer_ref.py's ids.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

typedef enum ldmc_tokens_convention {
    LDMC_TOKENS_HF,
    LDMC_TOKENS_OPEN_CLIP,
} ldmc_tokens_convention;

typedef struct ldmc_tokenizer ldmc_tokenizer;

// Loads a vocabulary: a merges file (OpenAI's .txt.gz or .txt, or HF's merges.txt), or a folder
// holding merges.txt (and vocab.json, which must then agree with the merges), or a diffusers
// folder (its tokenizer/, else tokenizer_2/). NULL with a message naming the file on failure.
ldmc_tokenizer *ldmc_tokenizer_load(const char *path, ldmc_err *err);
void ldmc_tokenizer_free(ldmc_tokenizer *t);
// Where the vocabulary was read from, and its size (512 + merges + 2; CLIP's: 49,408).
const char *ldmc_tokenizer_path(const ldmc_tokenizer *t);
int ldmc_tokenizer_vocab_size(const ldmc_tokenizer *t);
int ldmc_tokenizer_sot(const ldmc_tokenizer *t); // <|startoftext|>: vocab - 2
int ldmc_tokenizer_eot(const ldmc_tokenizer *t); // <|endoftext|>: vocab - 1

// The ids of `text` framed for an encoder of `n` positions (77): ids[0..n) with the convention's
// truncation and padding. Returns the position of the end token. Thread-safe (no shared state).
int ldmc_tokenize(const ldmc_tokenizer *t, ldmc_tokens_convention convention, const char *text,
                  int n, int32_t *ids);

// The token text of an id (its byte-level symbols, "</w>" included), for messages and tests.
const char *ldmc_tokenizer_token(const ldmc_tokenizer *t, int id);

// The cleanup alone: `text` as the convention cleans it before pre-tokenization (UTF-8, malloc'ed;
// free it). The HF convention's special-token split is not part of it.
char *ldmc_text_clean(ldmc_tokens_convention convention, const char *text);
