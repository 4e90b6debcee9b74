// Safetensors: round trips of every dtype (with conversion and metadata), unaligned data
// sections, and one test per kind of malformed file, each of which must get a clear error that
// names the file and the problem, and no crash (CI runs this under ASan and UBSan). Finally,
// thousands of random corruptions of a valid file: each opens or fails cleanly.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/rng.h"
#include "harness.h"
#include "io/safetensors.h"

static char dir[256];

static const char *path_of(const char *name) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

// Writes an 8-byte header length, the header text (its real length unless header_len is
// given) and then `data` bytes of a counting pattern.
static const char *write_raw(const char *name, uint64_t header_len, const char *header,
                             size_t data) {
    const char *path = path_of(name);
    FILE *f = fopen(path, "wb");
    if (!f) return path;
    uint64_t len = header_len ? header_len : strlen(header);
    for (int i = 0; i < 8; i++)
        fputc((int)((len >> (8 * i)) & 0xff), f);
    fputs(header, f);
    for (size_t i = 0; i < data; i++)
        fputc((int)(i & 0xff), f);
    fclose(f);
    return path;
}

static void expect_open_error(const char *path, const char *text) {
    test_expect_open_failure(ldmc_safetensors_open, path, text);
}

static void test_round_trip_every_dtype(void) {
    float f32[6] = {1.5f, -2.25f, 3e-3f, 65504.0f, -0.0f, 1e-8f};
    uint16_t f16[3] = {0x3c00, 0xc000, 0x0001}, bf16[2] = {0x3f80, 0xbf00};
    int32_t i32[4] = {1, -2, 2147483647, -2147483647 - 1};
    int64_t i64[2] = {9007199254740993LL, -5};
    ldmc_st_entry entries[] = {
        {"f32", LDMC_F32, LDMC_F32, 2, {2, 3}, f32, NULL},
        {"f16", LDMC_F16, LDMC_F16, 1, {3}, f16, NULL},
        {"bf16", LDMC_BF16, LDMC_BF16, 2, {1, 2}, bf16, NULL},
        {"i32", LDMC_I32, LDMC_I32, 1, {4}, i32, NULL},
        {"i64", LDMC_I64, LDMC_I64, 1, {2}, i64, NULL},
        {"f32_as_bf16", LDMC_BF16, LDMC_F32, 1, {6}, f32, NULL},
        {"scalar", LDMC_F32, LDMC_F32, 0, {0}, f32, NULL},
        {"empty", LDMC_F32, LDMC_F32, 2, {0, 4}, f32, NULL},
    };
    ldmc_st_meta meta[] = {{"format", "pt"}, {"note", "quote \" and \\ survive"}};
    ldmc_err err = {0};
    const char *path = path_of("round_trip.safetensors");
    REQUIRE(ldmc_safetensors_write(path, entries, 8, meta, 2, &err) == 0, "%s", err.message);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(tmp, F_OK) != 0, "the temporary file was left behind");
    ldmc_safetensors st;
    REQUIRE(ldmc_safetensors_open(&st, path, &err) == 0, "%s", err.message);
    CHECK(st.count == 8, "%d tensors", st.count);
    CHECK((uintptr_t)(st.data - (const unsigned char *)st.map) % 8 == 0,
          "data section 8-byte aligned");
    CHECK(strcmp(ldmc_safetensors_meta(&st, "note"), "quote \" and \\ survive") == 0, "metadata");
    const ldmc_st_tensor *t = ldmc_safetensors_find(&st, "f32");
    float back[6];
    REQUIRE(t && t->ndim == 2 && t->shape[1] == 3, "f32 header");
    CHECK(ldmc_safetensors_read(&st, t, back, LDMC_F32, &err) == 0 && memcmp(back, f32, 24) == 0,
          "f32");
    int64_t i64_back[2];
    t = ldmc_safetensors_find(&st, "i64");
    CHECK(ldmc_safetensors_read(&st, t, i64_back, LDMC_I64, &err) == 0 && i64_back[0] == i64[0],
          "i64 beyond 2^53 is exact");
    int32_t i32_back[4];
    t = ldmc_safetensors_find(&st, "i32");
    CHECK(ldmc_safetensors_read(&st, t, i32_back, LDMC_I32, &err) == 0 &&
              memcmp(i32_back, i32, 16) == 0,
          "i32");
    CHECK(ldmc_safetensors_read(&st, t, back, LDMC_F32, &err) == -1 &&
              strstr(err.message, "cannot be read as F32"),
          "integers are not silently read as floats");
    ldmc_err_clear(&err);
    t = ldmc_safetensors_find(&st, "f16");
    CHECK(ldmc_safetensors_read(&st, t, back, LDMC_F32, &err) == 0 && back[0] == 1 &&
              back[1] == -2 && back[2] == 0x1p-24f,
          "f16 to f32");
    t = ldmc_safetensors_find(&st, "f32_as_bf16");
    CHECK(t->dtype == LDMC_BF16 && ldmc_safetensors_read(&st, t, back, LDMC_F32, &err) == 0,
          "bf16 on disk");
    for (int i = 0; i < 6; i++)
        CHECK(back[i] == ldmc_bf16_to_f32(ldmc_f32_to_bf16(f32[i])), "bf16 value %d", i);
    t = ldmc_safetensors_find(&st, "scalar");
    CHECK(t && t->ndim == 0 && ldmc_st_numel(t) == 1, "scalar");
    t = ldmc_safetensors_find(&st, "empty");
    CHECK(t && ldmc_st_numel(t) == 0 && t->begin == t->end, "empty tensor");
    ldmc_safetensors_close(&st);
}

// A header of odd length puts the data section at an odd address; reading must still work.
static void test_unaligned_data_section(void) {
    const char *header = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} ";
    REQUIRE(strlen(header) % 4 != 0, "the header should be unaligned");
    const char *path = path_of("unaligned.safetensors");
    FILE *f = fopen(path, "wb");
    REQUIRE(f, "cannot write %s", path);
    uint64_t len = strlen(header);
    fwrite(&len, 8, 1, f);
    fputs(header, f);
    float values[2] = {3.25f, -7.5f};
    fwrite(values, 4, 2, f);
    fclose(f);
    ldmc_safetensors st;
    ldmc_err err = {0};
    REQUIRE(ldmc_safetensors_open(&st, path, &err) == 0, "%s", err.message);
    float back[2];
    CHECK(ldmc_safetensors_read(&st, &st.tensors[0], back, LDMC_F32, &err) == 0 &&
              back[0] == 3.25f && back[1] == -7.5f,
          "unaligned read");
    ldmc_safetensors_close(&st);
}

#define TENSOR(name, dtype, shape, begin, end)                                                     \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #begin "," #end \
    "]}"

static void test_missing_and_non_regular_files(void) {
    expect_open_error(path_of("does_not_exist.safetensors"), "cannot open");
    expect_open_error(dir, "not a regular file");
}

static void test_too_short(void) {
    const char *path = path_of("short.safetensors");
    FILE *f = fopen(path, "wb");
    fputs("abc", f);
    fclose(f);
    expect_open_error(path, "too short");
}

static void test_huge_header_length(void) {
    expect_open_error(write_raw("huge.safetensors", UINT64_MAX, "{}", 0), "header length");
    expect_open_error(write_raw("past_end.safetensors", 4000, "{}", 0),
                      "header length 4000 is impossible");
    expect_open_error(write_raw("over_limit.safetensors", LDMC_SAFETENSORS_MAX_HEADER + 1, "{}", 0),
                      "at most 100000000");
}

static void test_bad_json(void) {
    expect_open_error(write_raw("bad_json.safetensors", 0, "{\"a\": {\"dtype\": ", 0),
                      "not valid JSON");
    expect_open_error(write_raw("not_object.safetensors", 0, "[1, 2]", 0), "must be a JSON object");
    expect_open_error(write_raw("entry_not_object.safetensors", 0, "{\"a\": 5}", 0),
                      "expected an object");
    expect_open_error(write_raw("bad_meta.safetensors", 0, "{\"__metadata__\": {\"k\": 1}}", 0),
                      "must be a string");
}

static void test_unknown_dtype(void) {
    expect_open_error(write_raw("f64.safetensors", 0, "{" TENSOR("w", "F64", "[1]", 0, 8) "}", 8),
                      "unsupported dtype \"F64\"");
    expect_open_error(write_raw("q8.safetensors", 0, "{" TENSOR("w", "Q8_K", "[1]", 0, 1) "}", 1),
                      "unsupported dtype");
    expect_open_error(
        write_raw("no_dtype.safetensors", 0, "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
        "missing \"dtype\"");
}

static void test_bad_shapes(void) {
    expect_open_error(write_raw("size.safetensors", 0, "{" TENSOR("w", "F32", "[3]", 0, 8) "}", 8),
                      "need 12 bytes but data_offsets span 8");
    expect_open_error(
        write_raw("negative.safetensors", 0, "{" TENSOR("w", "F32", "[-1]", 0, 4) "}", 4),
        "shape entry 0 is not a non-negative integer");
    expect_open_error(
        write_raw("fraction.safetensors", 0, "{" TENSOR("w", "F32", "[1.5]", 0, 4) "}", 4),
        "not a non-negative integer");
    expect_open_error(
        write_raw("rank.safetensors", 0, "{" TENSOR("w", "F32", "[1,1,1,1,1,1,1]", 0, 4) "}", 4),
        "rank 7");
    expect_open_error(write_raw("overflow.safetensors", 0,
                                "{" TENSOR("w", "F32", "[4294967296,4294967296]", 0, 4) "}", 4),
                      "shape overflows");
    expect_open_error(write_raw("no_shape.safetensors", 0,
                                "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4),
                      "missing \"shape\"");
}

static void test_bad_offsets(void) {
    expect_open_error(
        write_raw("beyond.safetensors", 0, "{" TENSOR("w", "F32", "[250]", 0, 1000) "}", 16),
        "go past the end of the data section");
    expect_open_error(
        write_raw("reversed.safetensors", 0, "{" TENSOR("w", "F32", "[1]", 8, 4) "}", 16),
        "begin <= end");
    expect_open_error(
        write_raw("three.safetensors", 0,
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 16),
        "must be [begin, end]");
    expect_open_error(
        write_raw("overlap.safetensors", 0,
                  "{" TENSOR("a", "F32", "[4]", 0, 16) "," TENSOR("b", "F32", "[4]", 8, 24) "}",
                  24),
        "overlap");
    expect_open_error(
        write_raw("duplicate.safetensors", 0,
                  "{" TENSOR("a", "F32", "[1]", 0, 4) "," TENSOR("a", "F32", "[1]", 4, 8) "}", 8),
        "appears twice");
}

// A file cut short inside its data section: the last tensor's offsets now pass the end.
static void test_truncated_file(void) {
    float data[64] = {0};
    ldmc_st_entry entries[] = {{"a", LDMC_F32, LDMC_F32, 1, {32}, data, NULL},
                               {"b", LDMC_F32, LDMC_F32, 1, {32}, data, NULL}};
    ldmc_err err = {0};
    const char *path = path_of("truncated.safetensors");
    REQUIRE(ldmc_safetensors_write(path, entries, 2, NULL, 0, &err) == 0, "%s", err.message);
    struct stat sb;
    REQUIRE(stat(path, &sb) == 0, "stat");
    REQUIRE(truncate(path, sb.st_size - 10) == 0, "truncate");
    expect_open_error(path, "file truncated?");
    REQUIRE(truncate(path, 12) == 0, "truncate");
    expect_open_error(path, "impossible");
}

static void test_writer_errors(void) {
    float x[1] = {0};
    ldmc_st_entry twice[] = {{"a", LDMC_F32, LDMC_F32, 1, {1}, x, NULL},
                             {"a", LDMC_F32, LDMC_F32, 1, {1}, x, NULL}};
    ldmc_err err = {0};
    CHECK(ldmc_safetensors_write(path_of("twice.safetensors"), twice, 2, NULL, 0, &err) == -1 &&
              strstr(err.message, "given twice"),
          "duplicate names refused");
    ldmc_err_clear(&err);
    CHECK(ldmc_safetensors_write("/nonexistent/dir/x.safetensors", twice, 1, NULL, 0, &err) == -1 &&
              strstr(err.message, "cannot create"),
          "unwritable path: %s", err.message);
}

// Random corruptions of a valid file's header and length: each must open or fail with a
// message, never crash or read out of bounds.
static void test_random_corruptions(void) {
    float data[24];
    for (int i = 0; i < 24; i++)
        data[i] = (float)i;
    ldmc_st_entry entries[] = {{"layer.weight", LDMC_F32, LDMC_F32, 2, {4, 4}, data, NULL},
                               {"layer.bias", LDMC_F16, LDMC_F32, 1, {4}, data, NULL},
                               {"step", LDMC_I64, LDMC_I64, 0, {0}, data, NULL}};
    ldmc_st_meta meta[] = {{"format", "pt"}};
    ldmc_err err = {0};
    const char *path = path_of("valid.safetensors");
    REQUIRE(ldmc_safetensors_write(path, entries, 3, meta, 1, &err) == 0, "%s", err.message);
    FILE *f = fopen(path, "rb");
    unsigned char original[1024];
    size_t size = fread(original, 1, sizeof original, f);
    fclose(f);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = (header_len << 8) | original[i];
    ldmc_rng rng = ldmc_rng_make(2024, 0, 0, LDMC_RNG_TEST);
    const char *mutant = path_of("mutant.safetensors");
    int opened = 0, failed = 0;
    for (uint64_t trial = 0; trial < 3000; trial++) {
        unsigned char bytes[1024];
        memcpy(bytes, original, size);
        int flips = 1 + (int)(ldmc_rng_bits(&rng, trial * 8) % 4);
        for (int k = 0; k < flips; k++) {
            uint32_t r = ldmc_rng_bits(&rng, trial * 8 + 1 + (uint64_t)k);
            size_t at = (r >> 8) % (8 + header_len); // the length and the header text
            static const char interesting[] = "0123456789[]{}\",:-.eE ";
            bytes[at] = (r & 1) ? (unsigned char)interesting[(r >> 1) % (sizeof interesting - 1)]
                                : (unsigned char)(r >> 16);
        }
        size_t cut = trial % 7 == 0 ? (ldmc_rng_bits(&rng, trial * 8 + 6) % size) : size;
        f = fopen(mutant, "wb");
        fwrite(bytes, 1, cut, f);
        fclose(f);
        ldmc_safetensors st;
        ldmc_err e = {0};
        if (ldmc_safetensors_open(&st, mutant, &e) == 0) {
            opened++;
            float out[64];
            for (int i = 0; i < st.count; i++) {
                if (ldmc_st_numel(&st.tensors[i]) <= 64 && st.tensors[i].dtype != LDMC_I64 &&
                    st.tensors[i].dtype != LDMC_I32)
                    ldmc_safetensors_read(&st, &st.tensors[i], out, LDMC_F32, &e);
            }
            ldmc_safetensors_close(&st);
        } else {
            failed++;
            CHECK(e.failed && strstr(e.message, mutant),
                  "a failure without a message naming the file");
        }
    }
    printf("    3000 corruptions: %d still valid, %d refused with a message\n", opened, failed);
    CHECK(failed > 1000, "most corruptions should be refused (%d were)", failed);
}

int main(int argc, char **argv) {
    snprintf(dir, sizeof dir, "%s/ldmc_test_safetensors_XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    static const test_entry tests[] = {
        TEST_ENTRY(test_round_trip_every_dtype),
        TEST_ENTRY(test_unaligned_data_section),
        TEST_ENTRY(test_missing_and_non_regular_files),
        TEST_ENTRY(test_too_short),
        TEST_ENTRY(test_huge_header_length),
        TEST_ENTRY(test_bad_json),
        TEST_ENTRY(test_unknown_dtype),
        TEST_ENTRY(test_bad_shapes),
        TEST_ENTRY(test_bad_offsets),
        TEST_ENTRY(test_truncated_file),
        TEST_ENTRY(test_writer_errors),
        TEST_ENTRY(test_random_corruptions),
    };
    int rc = test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return rc;
}
