// PyTorch checkpoint files (src/io/torch_file.c) against tests/ref/data/torch/, written by
// tests/ref/make_torch_files.py with PyTorch: every tensor of both formats (zip, stored and
// deflated, pickle protocols 2 and 4; legacy) bit for bit with its dtype, shape, name and order;
// a .ckpt's state_dict; forbidden globals refused by name; truncated and corrupted files (each
// opens or fails with a message naming it, never crashes: CI runs this under ASan and UBSan); the
// hook in ldmc_safetensors_open; and the tiny VAE loaded from a .ckpt by ldmc_load_model.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>

#include "core/rng.h"
#include "harness.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "io/torch_file.h"
#include "nn/models.h"

static const char *data_file(const char *name) {
    static char path[4][600];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%s/torch/%s", test_data_dir(), name);
    return p;
}

static unsigned char *read_whole(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    *size = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    return buf;
}

static void write_whole(const char *path, const void *bytes, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(bytes, 1, size, f);
    fclose(f);
}

// expected.safetensors's metadata entry `key`, parsed.
static cJSON *expected_meta(const ldmc_safetensors *expected, const char *key) {
    const char *text = ldmc_safetensors_meta(expected, key);
    return text ? cJSON_Parse(text) : NULL;
}

// Every tensor of `path` equals "<group>/<name>" of expected.safetensors, in the order of
// metadata "order_<group>", with the dtype of metadata "dtypes", byte for byte.
static void check_against_expected(const char *path, const char *group) {
    ldmc_err err = {0};
    ldmc_safetensors expected, got;
    REQUIRE(ldmc_safetensors_open(&expected, data_file("expected.safetensors"), &err) == 0, "%s",
            err.message);
    char order_key[64];
    snprintf(order_key, sizeof order_key, "order_%s", group);
    cJSON *order = expected_meta(&expected, order_key),
          *dtypes = expected_meta(&expected, "dtypes"),
          *shapes = expected_meta(&expected, "shapes");
    if (!order || !dtypes || !shapes || ldmc_torch_open(&got, path, &err) != 0) {
        CHECK(false, "%s: %s", path, err.failed ? err.message : "expected.safetensors metadata");
        cJSON_Delete(order), cJSON_Delete(dtypes), cJSON_Delete(shapes);
        ldmc_safetensors_close(&expected);
        return;
    }
    CHECK(got.count == cJSON_GetArraySize(order), "%s: %d tensors, expected %d", path, got.count,
          cJSON_GetArraySize(order));
    int i = 0;
    for (const cJSON *name = order->child; name && i < got.count; name = name->next, i++) {
        const ldmc_st_tensor *t = &got.tensors[i];
        char key[300];
        snprintf(key, sizeof key, "%s/%s", group, name->valuestring);
        const ldmc_st_tensor *want = ldmc_safetensors_find(&expected, key);
        const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(dtypes, key);
        if (!want || !cJSON_IsString(dtype)) {
            CHECK(false, "expected.safetensors lacks %s", key);
            continue;
        }
        CHECK(strcmp(t->name, name->valuestring) == 0, "%s: tensor %d is '%s', expected '%s'", path,
              i, t->name, name->valuestring);
        CHECK(strcmp(ldmc_dtype_name(t->dtype), dtype->valuestring) == 0, "%s: '%s' is %s, not %s",
              path, t->name, ldmc_dtype_name(t->dtype), dtype->valuestring);
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(shapes, key), *dim = NULL;
        bool same_shape = cJSON_IsArray(shape) && t->ndim == cJSON_GetArraySize(shape);
        int d = 0;
        if (same_shape) cJSON_ArrayForEach(dim, shape) same_shape &= t->shape[d++] == dim->valueint;
        CHECK(same_shape, "%s: '%s' has another shape (rank %d)", path, t->name, t->ndim);
        size_t bytes = (size_t)(t->end - t->begin);
        CHECK(bytes == want->end - want->begin && memcmp(t->data, want->data, bytes) == 0,
              "%s: '%s' differs from PyTorch's values", path, t->name);
    }
    cJSON_Delete(order), cJSON_Delete(dtypes), cJSON_Delete(shapes);
    ldmc_safetensors_close(&got);
    ldmc_safetensors_close(&expected);
}

// f32, f16, bf16, f64 (as f32), int64, int32, the small ints and bool (as I32), a 0-d and an
// empty tensor, a Parameter, a transpose, a strided slice with a storage offset, two tensors of
// one storage, BatchNorm's int64 counter: in the zip format (stored, deflated, protocol 4) and
// the legacy format.
static void test_state_dicts_match_pytorch(void) {
    static const char *const files[] = {"state.pth", "state_deflated.pth", "state_protocol4.pth",
                                        "state_legacy.pth"};
    for (int i = 0; i < 4; i++)
        check_against_expected(data_file(files[i]), "state");
    ldmc_err err = {0};
    ldmc_safetensors st;
    REQUIRE(ldmc_torch_open(&st, data_file("state.pth"), &err) == 0, "%s", err.message);
    const ldmc_st_tensor *scalar = ldmc_safetensors_find(&st, "scalar"),
                         *empty = ldmc_safetensors_find(&st, "empty"),
                         *sliced = ldmc_safetensors_find(&st, "sliced");
    CHECK(scalar && scalar->ndim == 0 && scalar->end - scalar->begin == 4, "the 0-d tensor");
    CHECK(empty && empty->ndim == 2 && empty->shape[0] == 0 && empty->begin == empty->end,
          "the empty tensor");
    CHECK(sliced && sliced->ndim == 2 && sliced->shape[0] == 3 && sliced->shape[1] == 3,
          "the slice");
    CHECK(st.owned && st.map != NULL, "a PyTorch file's tensors live in an owned buffer");
    ldmc_safetensors_close(&st);
}

// A Lightning / SD .ckpt: the tensors of 'state_dict' only (not 'loose' beside it), and
// global_step, epoch, optimizer states and hyper-parameters (a set, a dtype, a 70-bit int, and
// Lightning's ModelCheckpoint and AttributeDict, which are inert names) skipped.
static void test_ckpt_reads_its_state_dict(void) {
    check_against_expected(data_file("model.ckpt"), "ckpt");
    ldmc_err err = {0};
    ldmc_safetensors st;
    REQUIRE(ldmc_torch_open(&st, data_file("model.ckpt"), &err) == 0, "%s", err.message);
    CHECK(!ldmc_safetensors_find(&st, "global_step") && !ldmc_safetensors_find(&st, "loose") &&
              !ldmc_safetensors_find(&st, "epoch"),
          "entries beside the state_dict were read");
    ldmc_safetensors_close(&st);
}

static void expect_refused(const char *path, const char *text) {
    test_expect_open_failure(ldmc_torch_open, path, text);
}

// A pickled call of os.system (PyTorch's plain torch.load would run it) is refused by name, in
// both formats; so is a big-endian file, and a zip archive torch.save did not write.
static void test_forbidden_and_foreign_files(void) {
    expect_refused(data_file("forbidden.pth"), "refuses pickle global posix.system");
    expect_refused(data_file("forbidden_legacy.pth"), "refuses pickle global posix.system");
    expect_refused(data_file("big_endian.pth"), "byteorder says 'big'");
    expect_refused(data_file("no_data_pkl.pth"), "without <folder>/data.pkl");
    expect_refused(data_file("expected.safetensors"), "not a PyTorch file");
    expect_refused(test_tmp_path("missing.pth"), "cannot open");
}

// Copies of each file cut short: every length for the legacy file and the .ckpt's first bytes,
// a spread of lengths for the archives. Each must fail with a message naming the copy.
static void test_truncated_files(void) {
    static const char *const files[] = {"state_legacy.pth", "state.pth", "state_deflated.pth",
                                        "state_protocol4.pth", "model.ckpt"};
    const char *cut_path = test_tmp_path("cut.pth");
    int tried = 0;
    for (int f = 0; f < 5; f++) {
        size_t size;
        unsigned char *bytes = read_whole(data_file(files[f]), &size);
        REQUIRE(bytes, "cannot read %s", files[f]);
        size_t step = f == 0 ? 1 : size / 97 + 1;
        for (size_t cut = 0; cut < size; cut += cut < 64 ? 1 : step) {
            write_whole(cut_path, bytes, cut);
            ldmc_err err = {0};
            ldmc_safetensors st;
            int rc = ldmc_torch_open(&st, cut_path, &err);
            tried++;
            if (rc == 0) {
                CHECK(false, "%s cut to %zu of %zu bytes opened", files[f], cut, size);
                ldmc_safetensors_close(&st);
            } else {
                CHECK(strstr(err.message, cut_path) != NULL, "%s cut to %zu: '%s'", files[f], cut,
                      err.message);
            }
        }
        free(bytes);
    }
    printf("    %d truncated copies refused\n", tried);
}

static void open_mutant(const char *path, int *opened, int *failed) {
    ldmc_safetensors st;
    ldmc_err err = {0};
    if (ldmc_safetensors_open(&st, path, &err) == 0) {
        (*opened)++;
        float out[64];
        for (int i = 0; i < st.count; i++)
            if (ldmc_st_numel(&st.tensors[i]) <= 64 && st.tensors[i].dtype != LDMC_I64 &&
                st.tensors[i].dtype != LDMC_I32)
                ldmc_safetensors_read(&st, &st.tensors[i], out, LDMC_F32, &err);
        ldmc_safetensors_close(&st);
    } else {
        (*failed)++;
        CHECK(err.failed && strstr(err.message, path), "a failure without a message naming %s",
              path);
    }
}

// A few random bytes of `bytes` replaced, often by pickle opcodes and small numbers.
static void mutate(unsigned char *bytes, size_t size, const ldmc_rng *rng, uint64_t trial) {
    static const unsigned char interesting[] = "(.0123tuseaqhjRQbKJMXc}])\x80\x85\x86\x87\x8a\x94"
                                               "\x95\xff\x7f";
    int flips = 1 + (int)(ldmc_rng_bits(rng, trial * 8) % 4);
    for (int k = 0; k < flips; k++) {
        uint32_t r = ldmc_rng_bits(rng, trial * 8 + 1 + (uint64_t)k);
        size_t at = (size_t)(ldmc_rng_bits(rng, trial * 8 + 5 + (uint64_t)k) % size);
        bytes[at] =
            (r & 1) ? interesting[(r >> 1) % (sizeof interesting - 1)] : (unsigned char)(r >> 16);
    }
}

// Random corruptions of the legacy file (no checksum: they reach the unpickler and the storage
// records) and of the zip format's data.pkl rewritten into a valid archive (so that libzip's
// CRC check does not stop them first). Each opens or fails with a message.
static void test_random_corruptions(void) {
    ldmc_rng rng = ldmc_rng_make(1950, 0, 0, LDMC_RNG_TEST);
    size_t size;
    unsigned char *legacy = read_whole(data_file("state_legacy.pth"), &size);
    REQUIRE(legacy, "cannot read state_legacy.pth");
    unsigned char *bytes = malloc(size);
    const char *mutant = test_tmp_path("mutant.pth");
    int opened = 0, failed = 0;
    for (uint64_t trial = 0; trial < 3000; trial++) {
        memcpy(bytes, legacy, size);
        mutate(bytes + 14, size - 14, &rng, trial); // past the magic number: keep the probe
        write_whole(mutant, bytes, size);
        open_mutant(mutant, &opened, &failed);
    }
    printf("    3000 legacy corruptions: %d still valid, %d refused with a message\n", opened,
           failed);
    CHECK(failed > 1000, "most corruptions should be refused (%d were)", failed);
    free(bytes);
    free(legacy);

    // the zip format: data.pkl corrupted, the storages as they are
    int zerr = 0;
    zip_t *src = zip_open(data_file("state.pth"), ZIP_RDONLY, &zerr);
    REQUIRE(src, "cannot open state.pth with libzip");
    zip_int64_t n = zip_get_num_entries(src, 0);
    unsigned char *members[64] = {0};
    size_t sizes[64] = {0};
    REQUIRE(n > 0 && n <= 64, "%lld members", (long long)n);
    for (zip_int64_t i = 0; i < n; i++) {
        zip_stat_t zs;
        zip_stat_index(src, (zip_uint64_t)i, 0, &zs);
        sizes[i] = (size_t)zs.size;
        members[i] = malloc(sizes[i] + 1);
        zip_file_t *zf = zip_fopen_index(src, (zip_uint64_t)i, 0);
        zip_fread(zf, members[i], sizes[i]);
        zip_fclose(zf);
    }
    opened = failed = 0;
    for (uint64_t trial = 0; trial < 400; trial++) {
        zip_t *out = zip_open(mutant, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
        REQUIRE(out, "cannot write %s", mutant);
        unsigned char *pickle = NULL; // the members' buffers stay ours until zip_close
        for (zip_int64_t i = 0; i < n; i++) {
            const char *name = zip_get_name(src, (zip_uint64_t)i, 0);
            const unsigned char *member = members[i];
            if (strstr(name, "data.pkl")) {
                pickle = malloc(sizes[i] + 1);
                memcpy(pickle, members[i], sizes[i]);
                mutate(pickle, sizes[i], &rng, 100000 + trial);
                member = pickle;
            }
            zip_file_add(out, name, zip_source_buffer(out, member, sizes[i], 0), 0);
        }
        int closed = zip_close(out);
        free(pickle);
        REQUIRE(closed == 0, "cannot write %s", mutant);
        open_mutant(mutant, &opened, &failed);
    }
    printf("    400 data.pkl corruptions: %d still valid, %d refused with a message\n", opened,
           failed);
    CHECK(failed > 100, "most corruptions should be refused (%d were)", failed);
    for (zip_int64_t i = 0; i < n; i++)
        free(members[i]);
    zip_discard(src);
}

// ldmc_safetensors_open hands a PyTorch file to the torch reader: find and read (with dtype
// conversion) work on it as on a safetensors file.
static void test_safetensors_open_reads_pytorch_files(void) {
    ldmc_err err = {0};
    ldmc_safetensors st, expected;
    REQUIRE(ldmc_safetensors_open(&st, data_file("state_legacy.pth"), &err) == 0, "%s",
            err.message);
    REQUIRE(ldmc_safetensors_open(&expected, data_file("expected.safetensors"), &err) == 0, "%s",
            err.message);
    const ldmc_st_tensor *half = ldmc_safetensors_find(&st, "half"),
                         *bf16 = ldmc_safetensors_find(&st, "bf16"),
                         *want_half = ldmc_safetensors_find(&expected, "state/half"),
                         *want_bf16 = ldmc_safetensors_find(&expected, "state/bf16"),
                         *weight = ldmc_safetensors_find(&st, "0.weight");
    REQUIRE(half && bf16 && want_half && want_bf16 && weight, "tensors missing");
    CHECK(weight->dtype == LDMC_F32 && weight->ndim == 4 && weight->shape[0] == 4 &&
              weight->shape[1] == 3,
          "the convolution weight keeps PyTorch's (O, C, kH, kW)");
    float got[35];
    REQUIRE(ldmc_safetensors_read(&st, half, got, LDMC_F32, &err) == 0, "%s", err.message);
    for (int i = 0; i < 35; i++) {
        uint16_t bits;
        memcpy(&bits, (const unsigned char *)want_half->data + 2 * i, 2);
        CHECK(got[i] == ldmc_f16_to_f32(bits), "half[%d] read as f32: %g", i, got[i]);
    }
    REQUIRE(ldmc_safetensors_read(&st, bf16, got, LDMC_F32, &err) == 0, "%s", err.message);
    for (int i = 0; i < 12; i++) {
        uint16_t bits;
        memcpy(&bits, (const unsigned char *)want_bf16->data + 2 * i, 2);
        CHECK(got[i] == ldmc_bf16_to_f32(bits), "bf16[%d] read as f32: %g", i, got[i]);
    }
    ldmc_safetensors_close(&expected);
    ldmc_safetensors_close(&st);
    // the hook's errors are the torch reader's
    size_t size;
    unsigned char *bytes = read_whole(data_file("state.pth"), &size);
    REQUIRE(bytes, "cannot read state.pth");
    const char *cut = test_tmp_path("cut_hook.pth");
    write_whole(cut, bytes, size / 2);
    free(bytes);
    CHECK(ldmc_safetensors_open(&st, cut, &err) != 0 && strstr(err.message, cut) &&
              strstr(err.message, "zip"),
          "%s", err.message);
}

static uint64_t fnv1a64(const char *text) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

// tiny_vae.ckpt: configs/tiny_vae.yaml's autoencoder under its official keys in an SD-style
// .ckpt (with model_ema.* beside it), deflated. ldmc_load_model loads it; saved again in the
// official layout, value k of key K is ((k + FNV-1a-64(K)) mod 251 - 125) / 128, as written.
static void test_model_loads_from_a_ckpt(void) {
    ldmc_model_config cfg = test_model_config("tiny_vae.yaml");
    ldmc_vae v;
    ldmc_vae_init(&v, &cfg.vae);
    ldmc_params_alloc(&v.params, LDMC_ROLE_WEIGHTS);
    ldmc_err err = {0};
    int rc = test_load_vae(&v, data_file("tiny_vae.ckpt"), NULL, &err);
    CHECK(rc == 0, "%s", err.message);
    const char *saved = test_tmp_path("tiny_vae_from_ckpt.safetensors");
    if (rc == 0) rc = test_save_models(saved, LDMC_LAYOUT_OFFICIAL, NULL, &v, LDMC_F32, NULL, &err);
    ldmc_safetensors st;
    if (rc == 0) rc = ldmc_safetensors_open(&st, saved, &err);
    int params = v.params.count;
    ldmc_vae_free(&v);
    REQUIRE(rc == 0, "%s", err.message);
    CHECK(st.count == params && st.count == 124, "%d tensors saved for %d parameters", st.count,
          params);
    int64_t wrong = 0, values = 0;
    for (int i = 0; i < st.count; i++) {
        const ldmc_st_tensor *t = &st.tensors[i];
        int64_t n = ldmc_st_numel(t);
        uint64_t h = fnv1a64(t->name) % 251;
        for (int64_t k = 0; k < n; k++, values++) {
            float got;
            memcpy(&got, (const unsigned char *)t->data + 4 * k, 4);
            wrong += got != (float)(((int64_t)(((uint64_t)k + h) % 251) - 125) / 128.0);
        }
    }
    CHECK(wrong == 0 && values == 658375, "%lld of %lld values differ from the .ckpt's",
          (long long)wrong, (long long)values);
    ldmc_safetensors_close(&st);
}

static void test_probe(void) {
    static const unsigned char zip_head[] = "PK\x03\x04\x14\x00",
                               safetensors_head[] = "\x10\0\0\0\0\0\0\0{}",
                               legacy2[] =
                                   "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19",
                               legacy4[] = "\x80\x04\x95\x10\0\0\0\0\0\0\0\x8a\x0a\x6c\xfc\x9c"
                                           "\x46\xf9\x20\x6a\xa8\x50\x19",
                               other_pickle[] = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8"
                                                "\x50\x18";
    CHECK(ldmc_torch_file_probe(zip_head, 6), "a zip archive");
    CHECK(ldmc_torch_file_probe(legacy2, 14) && ldmc_torch_file_probe(legacy4, 23),
          "the legacy magic number, protocol 2 and 4");
    CHECK(!ldmc_torch_file_probe(safetensors_head, 10), "a safetensors file");
    CHECK(!ldmc_torch_file_probe(other_pickle, 14) && !ldmc_torch_file_probe(legacy2, 13) &&
              !ldmc_torch_file_probe(zip_head, 3) && !ldmc_torch_file_probe(zip_head, 0),
          "another number, or too few bytes");
}

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_probe),
        TEST_ENTRY(test_state_dicts_match_pytorch),
        TEST_ENTRY(test_ckpt_reads_its_state_dict),
        TEST_ENTRY(test_forbidden_and_foreign_files),
        TEST_ENTRY(test_truncated_files),
        TEST_ENTRY(test_random_corruptions),
        TEST_ENTRY(test_safetensors_open_reads_pytorch_files),
        TEST_ENTRY(test_model_loads_from_a_ckpt),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
