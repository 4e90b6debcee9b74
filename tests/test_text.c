// The CLIP tokenizer against tests/ref/clip_tokenizer_ref.py (OpenAI's and open_clip's
// SimpleTokenizer and HF's CLIPTokenizer re-implemented from their sources, ftfy's deterministic
// fixes included): 222 adversarial prompts, their ftfy cleanup, open_clip's cleaned text and the
// ids of both conventions, on the tests' own 1,000-token vocabulary and, where
// ../shared/data/clip holds them, on CLIP's real files (49,408 tokens; LDMC_CLIP_VOCAB names
// another folder). Also: the vocabulary files' layouts agree, and bad files are named.
// Reference data: tests/ref/data/clip_tokenizer.json, tests/ref/data/tiny_bpe/.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "text/text_clean.h"
#include "text/tokenizer.h"

static cJSON *ref;

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    if (text && fread(text, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    if (text) text[n] = 0;
    return text;
}

static const char *tiny_path(const char *file) {
    static char path[4][4096];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, 4096, "%s/tiny_bpe%s%s", test_data_dir(), file[0] ? "/" : "", file);
    return p;
}

// CLIP's real vocabulary folder, or NULL when this checkout has none beside it.
static const char *full_vocab(void) {
    static char path[4096];
    const char *env = getenv("LDMC_CLIP_VOCAB");
    if (env) snprintf(path, sizeof path, "%s", env);
    else snprintf(path, sizeof path, "%s/../../shared/data/clip", test_config_dir());
    char merges[4200];
    snprintf(merges, sizeof merges, "%s/merges.txt", path);
    return access(merges, R_OK) == 0 ? path : NULL;
}

static const char *prompt(int i) {
    return cJSON_GetArrayItem(cJSON_GetObjectItem(ref, "prompts"), i)->valuestring;
}

// A prompt a C string can carry (the reference lists those holding U+0000).
static bool whole(int i) {
    const cJSON *n;
    cJSON_ArrayForEach(n, cJSON_GetObjectItem(ref, "with_nul")) {
        if (n->valueint == i) return false;
    }
    return true;
}

static void test_vocabulary_layouts_agree(void) {
    ldmc_err err = {0};
    ldmc_tokenizer *folder = ldmc_tokenizer_load(tiny_path(""), &err);
    REQUIRE(folder, "%s", err.message);
    ldmc_tokenizer *gz = ldmc_tokenizer_load(tiny_path("bpe_tiny_vocab.txt.gz"), &err);
    REQUIRE(gz, "%s", err.message);
    CHECK(ldmc_tokenizer_vocab_size(folder) == 1000 && ldmc_tokenizer_vocab_size(gz) == 1000,
          "vocabularies of %d and %d tokens", ldmc_tokenizer_vocab_size(folder),
          ldmc_tokenizer_vocab_size(gz));
    for (int id = 0; id < 1000; id++)
        CHECK(!strcmp(ldmc_tokenizer_token(folder, id), ldmc_tokenizer_token(gz, id)),
              "token %d: %s vs %s", id, ldmc_tokenizer_token(folder, id),
              ldmc_tokenizer_token(gz, id));
    CHECK(!strcmp(ldmc_tokenizer_token(folder, 0), "!") &&
              !strcmp(ldmc_tokenizer_token(folder, 256), "!</w>") &&
              !strcmp(ldmc_tokenizer_token(folder, 998), "<|startoftext|>"),
          "bytes_to_unicode order and the specials");
    ldmc_tokenizer_free(folder);
    ldmc_tokenizer_free(gz);
    const char *full = full_vocab();
    if (!full) {
        printf("    (no ../shared/data/clip: CLIP's own files not checked)\n");
        return;
    }
    char gzpath[4200];
    snprintf(gzpath, sizeof gzpath, "%s/bpe_simple_vocab_16e6.txt.gz", full);
    ldmc_tokenizer *hf = ldmc_tokenizer_load(full, &err), *oai = ldmc_tokenizer_load(gzpath, &err);
    REQUIRE(hf && oai, "%s", err.message);
    CHECK(ldmc_tokenizer_vocab_size(hf) == 49408 && ldmc_tokenizer_vocab_size(oai) == 49408,
          "CLIP: %d and %d tokens", ldmc_tokenizer_vocab_size(hf), ldmc_tokenizer_vocab_size(oai));
    for (int id = 0; id < 49408; id += 7)
        CHECK(!strcmp(ldmc_tokenizer_token(hf, id), ldmc_tokenizer_token(oai, id)), "token %d", id);
    CHECK(!strcmp(ldmc_tokenizer_token(oai, 49405), "jekyll</w>"), "id 49405: %s",
          ldmc_tokenizer_token(oai, 49405));
    ldmc_tokenizer_free(hf);
    ldmc_tokenizer_free(oai);
}

// ftfy's fixes and open_clip's whole cleanup, string for string.
static void test_cleanup(void) {
    const cJSON *ftfy = cJSON_GetObjectItem(ref, "ftfy_subset");
    const cJSON *clean = cJSON_GetObjectItem(ref, "clean_open_clip");
    int n = cJSON_GetArraySize(ftfy), changed = 0, checked = 0;
    for (int i = 0; i < n; i++) {
        if (!whole(i)) continue;
        char *got = ldmc_text_ftfy(prompt(i));
        const char *want = cJSON_GetArrayItem(ftfy, i)->valuestring;
        CHECK(!strcmp(got, want), "prompt %d: ftfy gives \"%s\", want \"%s\"", i, got, want);
        changed += strcmp(want, prompt(i)) != 0;
        free(got);
        got = ldmc_text_clean(LDMC_TOKENS_OPEN_CLIP, prompt(i));
        want = cJSON_GetArrayItem(clean, i)->valuestring;
        CHECK(!strcmp(got, want), "prompt %d: open_clip's cleanup gives \"%s\", want \"%s\"", i,
              got, want);
        free(got);
        checked++;
    }
    printf("    %d of %d prompts (a C string cannot carry U+0000); ftfy's fixes change %d\n",
           checked, n, changed);
}

static void check_ids(ldmc_tokenizer *t, const char *vocab) {
    const cJSON *c;
    int compared = 0, failed = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(ref, "cases")) {
        if (strcmp(cJSON_GetObjectItem(c, "vocab")->valuestring, vocab)) continue;
        int p = cJSON_GetObjectItem(c, "prompt")->valueint;
        bool hf = !strcmp(cJSON_GetObjectItem(c, "convention")->valuestring, "hf");
        int32_t want[77], got[77];
        int n = 0;
        const cJSON *id;
        cJSON_ArrayForEach(id, cJSON_GetObjectItem(c, "ids")) {
            if (n < 77) want[n] = id->valueint;
            n++;
        }
        REQUIRE(n >= 2 && n <= 77, "case of prompt %d: %d ids", p, n);
        int end = n - 1;
        for (; n < 77; n++)
            want[n] = hf ? ldmc_tokenizer_eot(t) : 0;
        const char *text = prompt(p);
        if (!whole(p)) continue; // ldmc takes C strings: a NUL ends a caption (docs/text.md)
        int got_end = ldmc_tokenize(t, hf ? LDMC_TOKENS_HF : LDMC_TOKENS_OPEN_CLIP, text, 77, got);
        bool same = got_end == end && !memcmp(got, want, sizeof got);
        if (!same && failed++ < 8) {
            char a[800] = "", b[800] = "";
            for (int i = 0; i < 77 && strlen(a) < 700; i++) {
                snprintf(a + strlen(a), sizeof a - strlen(a), "%d ", got[i]);
                snprintf(b + strlen(b), sizeof b - strlen(b), "%d ", want[i]);
            }
            CHECK(same, "prompt %d (%s, %s vocabulary) \"%s\":\n      got  %s\n      want %s", p,
                  hf ? "hf" : "open_clip", vocab, text, a, b);
        }
        compared++;
    }
    CHECK(!failed, "%d of %d %s-vocabulary cases differ", failed, compared, vocab);
    CHECK(compared > 400, "only %d %s-vocabulary cases", compared, vocab);
}

static void test_ids_tiny_vocabulary(void) {
    ldmc_err err = {0};
    ldmc_tokenizer *t = ldmc_tokenizer_load(tiny_path(""), &err);
    REQUIRE(t, "%s", err.message);
    check_ids(t, "tiny");
    ldmc_tokenizer_free(t);
}

static void test_ids_clip_vocabulary(void) {
    const char *full = full_vocab();
    if (!full) {
        printf("    (no ../shared/data/clip: skipped; the tiny vocabulary's cases ran)\n");
        return;
    }
    ldmc_err err = {0};
    ldmc_tokenizer *t = ldmc_tokenizer_load(full, &err);
    REQUIRE(t, "%s", err.message);
    check_ids(t, "full");
    ldmc_tokenizer_free(t);
}

// Missing, foreign and inconsistent files are refused with the file named; odd text is taken.
static void test_bad_files_and_text(void) {
    ldmc_err err = {0};
    CHECK(!ldmc_tokenizer_load("/nonexistent/merges.txt", &err) &&
              strstr(err.message, "/nonexistent/merges.txt"),
          "%s", err.message);
    const char *dir = test_tmp_path("vocab");
    char path[4200], cmd[8500];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    FILE *f = fopen(path, "w");
    fputs("#version: 0.2\ni n\nthis line has three\n", f);
    fclose(f);
    ldmc_err_clear(&err);
    CHECK(!ldmc_tokenizer_load(dir, &err) && strstr(err.message, "line 3") &&
              strstr(err.message, path),
          "%s", err.message);
    f = fopen(path, "w");
    fputs("<html>not a vocabulary</html>\n", f);
    fclose(f);
    ldmc_err_clear(&err);
    CHECK(!ldmc_tokenizer_load(dir, &err) && strstr(err.message, "not a CLIP BPE merges file"),
          "%s", err.message);
    // the tests' merges with a vocab.json of another vocabulary beside them
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/merges.txt' && sed 's/\"in\": 512/\"in\": 513/' '%s' > '%s/vocab.json'",
             tiny_path("merges.txt"), dir, tiny_path("vocab.json"), dir);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    ldmc_err_clear(&err);
    CHECK(!ldmc_tokenizer_load(dir, &err) && strstr(err.message, "vocab.json") &&
              strstr(err.message, "not one vocabulary"),
          "%s", err.message);
    // invalid UTF-8, a long caption, control characters: ids, no crash
    ldmc_tokenizer *t = ldmc_tokenizer_load(tiny_path(""), &err);
    REQUIRE(t, "%s", err.message);
    int32_t ids[77];
    CHECK(ldmc_tokenize(t, LDMC_TOKENS_OPEN_CLIP, "caf\xC3 \xFF\xFE x", 77, ids) > 1, "bad UTF-8");
    char *big = malloc(1 << 20);
    for (int i = 0; i < (1 << 20) - 1; i++)
        big[i] = "ab c&#;<\x1b"[i % 9];
    big[(1 << 20) - 1] = 0;
    CHECK(ldmc_tokenize(t, LDMC_TOKENS_HF, big, 77, ids) == 76 && ids[76] == 999, "a 1 MB caption");
    // one 1 MB word (no spaces, no punctuation): the first 75 tokens of its first 4096 letters
    // (BPE is quadratic in a word), which are those of the word cut at 4096 letters and at 3000:
    // where a word ends does not reach its first tokens
    for (int i = 0; i < (1 << 20) - 1; i++)
        big[i] = "abcdefghij"[(i * 7 + i / 13) % 10];
    int32_t a[77], b[77];
    ldmc_tokenize(t, LDMC_TOKENS_OPEN_CLIP, big, 77, ids);
    big[4096] = 0;
    ldmc_tokenize(t, LDMC_TOKENS_OPEN_CLIP, big, 77, a);
    big[3000] = 0;
    ldmc_tokenize(t, LDMC_TOKENS_OPEN_CLIP, big, 77, b);
    CHECK(!memcmp(ids, a, sizeof a) && !memcmp(a, b, sizeof a) && ids[76] == 999,
          "a long word's tokens depend on its end");
    free(big);
    ldmc_tokenizer_free(t);
}

int main(int argc, char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/clip_tokenizer.json", test_data_dir());
    char *text = read_file(path);
    ref = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!ref) {
        fprintf(stderr, "%s: cannot read the reference ids\n", path);
        return 1;
    }
    static const test_entry tests[] = {
        TEST_ENTRY(test_vocabulary_layouts_agree), TEST_ENTRY(test_cleanup),
        TEST_ENTRY(test_ids_tiny_vocabulary),      TEST_ENTRY(test_ids_clip_vocabulary),
        TEST_ENTRY(test_bad_files_and_text),
    };
    int rc = test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
    cJSON_Delete(ref);
    return rc;
}
