// Model configs: the `unet:` and `vae:` sections of a YAML config (configs/*.yaml) as structs,
// validated with messages that name the file, line and key. Field comments give SDXL base's
// values. Tested by tests/test_config.c and, through the models, tests/test_models.c.
#pragma once
#include <stdbool.h>

#include "core/error.h"
#include "io/config.h"

#define LDMC_MAX_LEVELS 8
#define LDMC_MAX_VECTOR_PARTS 8

// The named parts of the UNet's vector conditioning, in the order a config lists them.
typedef enum ldmc_vector_part {
    LDMC_VECTOR_POOLED_TEXT,     // pooled text embedding, pooled_dim features (bigG: 1280)
    LDMC_VECTOR_ORIGINAL_SIZE,   // (height, width) of the source image: 2 x 256 Fourier features
    LDMC_VECTOR_CROP_COORDS,     // (top, left) of the crop: 2 x 256
    LDMC_VECTOR_TARGET_SIZE,     // (height, width) asked for: 2 x 256
    LDMC_VECTOR_AESTHETIC_SCORE, // the refiner's aesthetic score: 1 x 256
    LDMC_VECTOR_PART_COUNT
} ldmc_vector_part;

#define LDMC_FOURIER_DIM 256 // features per scalar of a Fourier part ([cos | sin], max period 1e4)

const char *ldmc_vector_part_name(ldmc_vector_part part);
// How many scalars a part has (0 for pooled_text).
int ldmc_vector_part_scalars(ldmc_vector_part part);

typedef struct ldmc_unet_config {
    int in_channels, out_channels;              // 4, 4
    int model_channels;                         // 320
    int levels;                                 // 3
    int channel_mult[LDMC_MAX_LEVELS];          // 1, 2, 4
    int num_res_blocks;                         // 2
    int attention_resolutions[LDMC_MAX_LEVELS]; // downsample factors with attention: 4, 2
    int n_attention_resolutions;
    int transformer_depth[LDMC_MAX_LEVELS];         // 1, 2, 10
    int transformer_depth_middle;                   // 10
    int num_head_channels;                          // 64
    int context_dim;                                // 2048 (0: no cross-attention context)
    ldmc_vector_part vector[LDMC_MAX_VECTOR_PARTS]; // pooled_text, original_size, crop, target
    int n_vector;                                   // 4 (0: no label_emb)
    int pooled_dim;                                 // 1280
    int adm_in_channels;                            // 2816 = pooled_dim + 256 x scalars
    int n_classes, class_dim;                       // class-conditional models: 1000, 1024 (else 0)
} ldmc_unet_config;

typedef struct ldmc_vae_config {
    int in_channels, out_channels; // 3, 3
    int ch;                        // 128
    int levels;                    // 4
    int ch_mult[LDMC_MAX_LEVELS];  // 1, 2, 4, 4
    int num_res_blocks;            // 2
    int z_channels;                // 4
    int embed_dim;                 // 4
    bool double_z;                 // true
    double scale_factor;           // 0.13025
} ldmc_vae_config;

// The width of the pooled text the UNet's vector takes: pooled_dim when it has pooled_text, else 0.
int ldmc_unet_pooled_text_dim(const ldmc_unet_config *c);
// Whether the level (ds = 2^level) has SpatialTransformers.
bool ldmc_unet_level_has_attention(const ldmc_unet_config *c, int level);
int ldmc_unet_config_parse(const ldmc_cfg *section, ldmc_unet_config *out, ldmc_err *err);
int ldmc_vae_config_parse(const ldmc_cfg *section, ldmc_vae_config *out, ldmc_err *err);

// A text encoder (one entry of `text_encoders:`): CLIP's text transformer, pre-norm blocks with
// a causal mask, in one of two key layouts. Field comments give SDXL's CLIP ViT-L | OpenCLIP bigG.
typedef enum ldmc_text_layout {
    LDMC_TEXT_HF,        // HF CLIPTextModel keys (text_model.*), separate q/k/v projections
    LDMC_TEXT_OPEN_CLIP, // open_clip keys, packed in_proj, text_projection used as x P
} ldmc_text_layout;

#define LDMC_MAX_TEXT_ENCODERS 2

typedef struct ldmc_text_config {
    ldmc_text_layout layout;  // hf | open_clip
    int vocab_size;           // 49408
    int context_length;       // 77
    int width, heads, layers; // 768, 12, 12 | 1280, 20, 32
    int mlp_width;            // 3072 | 5120
    bool quick_gelu;          // true (QuickGELU) | false (exact GELU)
    int hidden_layer;         // the hidden state used as context: 11 | 31 (the penultimate)
    int projection_dim;       // pooled output width: 0 (none) | 1280
    int index;                // its place in the conditioner (conditioner.embedders.<index>)
} ldmc_text_config;

const char *ldmc_text_layout_name(ldmc_text_layout layout);
int ldmc_text_config_parse(const ldmc_cfg *section, ldmc_text_config *out, ldmc_err *err);

// A model config file: a `unet:` section, a `vae:` section, or both, and the UNet's text encoders.
typedef struct ldmc_model_config {
    bool has_unet, has_vae;
    ldmc_unet_config unet;
    ldmc_vae_config vae;
    int n_text; // text_encoders: 0, 1 (the refiner's bigG) or 2 (SDXL base: CLIP-L, bigG)
    ldmc_text_config text[LDMC_MAX_TEXT_ENCODERS];
} ldmc_model_config;

int ldmc_model_config_load(const char *path, ldmc_model_config *out, ldmc_err *err);
