// The CLIP BPE tokenizer (see tokenizer.h): the vocabulary rebuilt from the merges as OpenAI's
// SimpleTokenizer builds it, the pre-tokenization pattern matched by hand with utf8proc's
// classes, and BPE by merge rank. Tested by tests/test_text.c.
#include "text/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "io/files.h"
#include "text/text_clean.h"
#include "text/unicode.h"

#define MAX_MERGES 48894 // CLIP's files hold more; merges[1 : 49152 - 256 - 2 + 1] are used

// Open addressing: string -> id, and (left id, right id) -> merge.
typedef struct str_slot {
    uint32_t offset, len; // into the pool; len 0: empty
    int32_t id;
} str_slot;

typedef struct pair_slot {
    uint64_t key; // (left + 1) << 32 | (right + 1); 0: empty
    int32_t rank, result;
} pair_slot;

struct ldmc_tokenizer {
    char *path;
    int vocab;        // 512 + merges + 2
    char *pool;       // every token's text, NUL-terminated
    uint32_t *offset; // (vocab): its text in the pool
    str_slot *strs;
    size_t str_cap;
    pair_slot *pairs;
    size_t pair_cap;
    int byte_id[256]; // a byte's symbol id (0..255, in bytes_to_unicode's order)
};

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 0x100000001B3ull;
    return h;
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    return x;
}

static int str_find(const ldmc_tokenizer *t, const char *s, size_t n) {
    for (size_t i = hash_bytes(s, n) & (t->str_cap - 1);; i = (i + 1) & (t->str_cap - 1)) {
        const str_slot *e = &t->strs[i];
        if (!e->len) return -1;
        if (e->len == n && !memcmp(t->pool + e->offset, s, n)) return e->id;
    }
}

// Later tokens with the same text win, as in the Python dict the original builds.
static void str_insert(ldmc_tokenizer *t, uint32_t offset, uint32_t n, int32_t id) {
    const char *s = t->pool + offset;
    for (size_t i = hash_bytes(s, n) & (t->str_cap - 1);; i = (i + 1) & (t->str_cap - 1)) {
        str_slot *e = &t->strs[i];
        if (!e->len || (e->len == n && !memcmp(t->pool + e->offset, s, n))) {
            *e = (str_slot){offset, n, id};
            return;
        }
    }
}

static const pair_slot *pair_find(const ldmc_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(a + 1) << 32 | (uint64_t)(b + 1);
    for (size_t i = mix(key) & (t->pair_cap - 1);; i = (i + 1) & (t->pair_cap - 1)) {
        const pair_slot *e = &t->pairs[i];
        if (!e->key) return NULL;
        if (e->key == key) return e;
    }
}

static void pair_insert(ldmc_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t result) {
    uint64_t key = (uint64_t)(a + 1) << 32 | (uint64_t)(b + 1);
    for (size_t i = mix(key) & (t->pair_cap - 1);; i = (i + 1) & (t->pair_cap - 1)) {
        pair_slot *e = &t->pairs[i];
        if (e->key == key) { // a repeated merge takes its last rank, as the originals' dict does
            e->rank = rank;
            e->result = result;
            return;
        }
        if (!e->key) {
            *e = (pair_slot){key, rank, result};
            return;
        }
    }
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

// A whole file, gunzipped when it is gzip; NUL-terminated. NULL with an error.
static char *read_text(const char *path, size_t *len, ldmc_err *err) {
    gzFile f = gzopen(path, "rb");
    if (!f) {
        LDMC_ERR(err, "%s: cannot open the tokenizer vocabulary: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap + 1);
    LDMC_CHECK(buf, "out of memory");
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            LDMC_CHECK(buf, "out of memory");
        }
        int k = gzread(f, buf + n, (unsigned)(cap - n));
        if (k < 0) {
            int code;
            LDMC_ERR(err, "%s: cannot read the tokenizer vocabulary: %s", path, gzerror(f, &code));
            gzclose(f);
            free(buf);
            return NULL;
        }
        if (k == 0) break;
        n += (size_t)k;
    }
    gzclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    LDMC_CHECK(p, "out of memory");
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

// The merges file a path names: itself, or the merges.txt of the folder, of its tokenizer/ or of
// its tokenizer_2/ (a diffusers folder). NULL with an error.
static char *find_merges(const char *path, ldmc_err *err) {
    if (!ldmc_is_dir(path)) {
        if (is_file(path)) return strdup(path);
        LDMC_ERR(err,
                 "%s: no such tokenizer vocabulary (a merges file, a tokenizer folder or a "
                 "diffusers folder)",
                 path);
        return NULL;
    }
    static const char *const tries[] = {"merges.txt", "tokenizer/merges.txt",
                                        "tokenizer_2/merges.txt"};
    for (size_t i = 0; i < sizeof tries / sizeof *tries; i++) {
        char *p = join(path, tries[i]);
        if (is_file(p)) return p;
        free(p);
    }
    LDMC_ERR(err, "%s: a folder without merges.txt, tokenizer/merges.txt or tokenizer_2/merges.txt",
             path);
    return NULL;
}

// The vocabulary's text: the 256 byte symbols, the same with </w>, the merges, the specials.
static void build_vocab(ldmc_tokenizer *t, char **lines, int n_merges, const char *sot,
                        const char *eot) {
    int bs[256], nb = 0;
    bool printable[256] = {0};
    for (int b = 0; b < 256; b++)
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
            bs[nb++] = b;
            printable[b] = true;
        }
    int32_t cp[256];
    for (int i = 0; i < nb; i++)
        cp[i] = bs[i];
    for (int b = 0, extra = 0; b < 256; b++)
        if (!printable[b]) {
            cp[nb] = 256 + extra++;
            bs[nb++] = b;
        }
    size_t pool_size = 256 * 2 * 8 + strlen(sot) + strlen(eot) + 2;
    for (int m = 0; m < n_merges; m++)
        pool_size += strlen(lines[m]) + 1;
    t->pool = malloc(pool_size);
    t->offset = malloc((size_t)t->vocab * sizeof *t->offset);
    LDMC_CHECK(t->pool && t->offset, "out of memory");
    size_t at = 0;
    for (int id = 0; id < 512; id++) {
        t->offset[id] = (uint32_t)at;
        char *s = NULL;
        size_t len = 0;
        ldmc_cps_to_utf8(&cp[id % 256], 1, &s, &len);
        memcpy(t->pool + at, s, len);
        at += len;
        free(s);
        if (id >= 256) {
            memcpy(t->pool + at, "</w>", 4);
            at += 4;
        }
        t->pool[at++] = 0;
        if (id < 256) t->byte_id[bs[id]] = id;
    }
    for (int m = 0; m < n_merges; m++) { // "a b" -> "ab"
        t->offset[512 + m] = (uint32_t)at;
        for (const char *c = lines[m]; *c; c++)
            if (*c != ' ') t->pool[at++] = *c;
        t->pool[at++] = 0;
    }
    t->offset[t->vocab - 2] = (uint32_t)at;
    at += (size_t)sprintf(t->pool + at, "%s", sot) + 1;
    t->offset[t->vocab - 1] = (uint32_t)at;
    at += (size_t)sprintf(t->pool + at, "%s", eot) + 1;
    t->str_cap = pow2_at_least(2 * (size_t)t->vocab);
    t->strs = calloc(t->str_cap, sizeof *t->strs);
    LDMC_CHECK(t->strs, "out of memory");
    for (int id = 0; id < t->vocab; id++)
        str_insert(t, t->offset[id], (uint32_t)strlen(t->pool + t->offset[id]), id);
    t->pair_cap = pow2_at_least(2 * (size_t)n_merges);
    t->pairs = calloc(t->pair_cap, sizeof *t->pairs);
    LDMC_CHECK(t->pairs, "out of memory");
    for (int m = 0; m < n_merges; m++) {
        const char *space = strchr(lines[m], ' ');
        int a = str_find(t, lines[m], (size_t)(space - lines[m]));
        int b = str_find(t, space + 1, strlen(space + 1));
        const char *merged = t->pool + t->offset[512 + m];
        if (a >= 0 && b >= 0) pair_insert(t, a, b, m, str_find(t, merged, strlen(merged)));
    }
}

// vocab.json must give every token the id the merges give it.
static int check_vocab_json(const ldmc_tokenizer *t, const char *path, ldmc_err *err) {
    size_t len;
    char *text = read_text(path, &len, err);
    if (!text) return -1;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return LDMC_ERR(err, "%s: not a JSON object of token -> id", path);
    }
    int n = 0, rc = 0;
    for (const cJSON *e = j->child; e && !rc; e = e->next, n++) {
        int id = str_find(t, e->string, strlen(e->string));
        if (!cJSON_IsNumber(e) || id != e->valueint)
            rc = LDMC_ERR(err,
                          "%s: token \"%s\" has id %d, but the merges beside it give %d: the two "
                          "files are not one vocabulary",
                          path, e->string, cJSON_IsNumber(e) ? e->valueint : -1, id);
    }
    cJSON_Delete(j);
    if (!rc && n != t->vocab)
        rc = LDMC_ERR(err, "%s: %d tokens, but the merges beside it make %d", path, n, t->vocab);
    return rc;
}

ldmc_tokenizer *ldmc_tokenizer_load(const char *path, ldmc_err *err) {
    char *merges = find_merges(path, err);
    if (!merges) return NULL;
    size_t len;
    char *text = read_text(merges, &len, err);
    if (!text) {
        free(merges);
        return NULL;
    }
    // Lines: the header, then "a b" merges; the last line may end without a newline.
    char **lines = malloc((MAX_MERGES + 1) * sizeof *lines);
    LDMC_CHECK(lines, "out of memory");
    int n_lines = 0, rc = 0;
    for (char *p = text; *p && n_lines <= MAX_MERGES;) {
        char *end = strchr(p, '\n');
        if (end) *end = 0;
        if (end && end > p && end[-1] == '\r') end[-1] = 0;
        if (n_lines > 0 || *p) lines[n_lines++] = p;
        if (!end) break;
        p = end + 1;
    }
    while (n_lines > 1 && !*lines[n_lines - 1]) // trailing empty lines
        n_lines--;
    bool header = n_lines >= 1 && strstr(lines[0], "#version") != NULL;
    if (n_lines < 2 || !header)
        rc = LDMC_ERR(err,
                      "%s: not a CLIP BPE merges file (expected a '#version' header line, then "
                      "one 'a b' merge per line)",
                      merges);
    for (int i = 1; !rc && i < n_lines; i++) {
        const char *space = strchr(lines[i], ' ');
        if (!space || space == lines[i] || !space[1] || strchr(space + 1, ' '))
            rc = LDMC_ERR(err, "%s: line %d: \"%.60s\" is not a merge of two symbols ('a b')",
                          merges, i + 1, lines[i]);
    }
    ldmc_tokenizer *t = NULL;
    if (!rc) {
        t = calloc(1, sizeof *t);
        LDMC_CHECK(t, "out of memory");
        t->path = merges;
        t->vocab = 512 + (n_lines - 1) + 2;
        build_vocab(t, lines + 1, n_lines - 1, "<|startoftext|>", "<|endoftext|>");
        char *dir = strdup(merges), *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        char *json = join(slash ? dir : ".", "vocab.json");
        if (is_file(json) && check_vocab_json(t, json, err)) {
            ldmc_tokenizer_free(t);
            t = NULL;
        }
        free(json);
        free(dir);
    } else {
        free(merges);
    }
    free(lines);
    free(text);
    return t;
}

void ldmc_tokenizer_free(ldmc_tokenizer *t) {
    if (!t) return;
    free(t->path);
    free(t->pool);
    free(t->offset);
    free(t->strs);
    free(t->pairs);
    free(t);
}

const char *ldmc_tokenizer_path(const ldmc_tokenizer *t) { return t->path; }
int ldmc_tokenizer_vocab_size(const ldmc_tokenizer *t) { return t->vocab; }
int ldmc_tokenizer_sot(const ldmc_tokenizer *t) { return t->vocab - 2; }
int ldmc_tokenizer_eot(const ldmc_tokenizer *t) { return t->vocab - 1; }

const char *ldmc_tokenizer_token(const ldmc_tokenizer *t, int id) {
    LDMC_CHECK(id >= 0 && id < t->vocab, "tokenizer: id %d outside [0, %d)", id, t->vocab);
    return t->pool + t->offset[id];
}

// ---- pre-tokenization and BPE ------------------------------------------------------------------

typedef struct id_list {
    int32_t *v;
    int n, cap, limit; // stops growing at limit
} id_list;

static void ids_push(id_list *l, int32_t id) {
    if (l->n >= l->limit) return;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 128;
        l->v = realloc(l->v, (size_t)l->cap * sizeof *l->v);
        LDMC_CHECK(l->v, "out of memory");
    }
    l->v[l->n++] = id;
}

// BPE of one pre-token (code points [0, n)) appended to out.
// BPE's cost grows with the square of a word's length; a word longer than this (a run of CJK
// text without spaces, a corrupt caption) is tokenized from its start only: the 77 positions are
// full long before its end, and a merge reaches no further than a token's length, so the tokens
// that fit are the same.
#define MAX_WORD 4096

static void bpe(const ldmc_tokenizer *t, const int32_t *cp, size_t n, id_list *out) {
    if (n > MAX_WORD) n = MAX_WORD;
    char *utf8 = NULL;
    size_t len = 0;
    ldmc_cps_to_utf8(cp, n, &utf8, &len);
    int32_t stack[64], *w = len <= 64 ? stack : malloc(len * sizeof *w);
    LDMC_CHECK(w, "out of memory");
    int m = (int)len;
    for (int i = 0; i < m; i++) // the word's last symbol carries </w>
        w[i] = t->byte_id[(uint8_t)utf8[i]] + (i == m - 1 ? 256 : 0);
    free(utf8);
    while (m > 1) {
        const pair_slot *best = NULL;
        for (int i = 0; i + 1 < m; i++) {
            const pair_slot *p = pair_find(t, w[i], w[i + 1]);
            if (p && (!best || p->rank < best->rank)) best = p;
        }
        if (!best) break;
        int32_t a = (int32_t)(best->key >> 32) - 1, b = (int32_t)(best->key & 0xFFFFFFFF) - 1;
        int k = 0;
        for (int i = 0; i < m;) {
            if (i + 1 < m && w[i] == a && w[i + 1] == b) {
                w[k++] = best->result;
                i += 2;
            } else {
                w[k++] = w[i++];
            }
        }
        m = k;
    }
    for (int i = 0; i < m; i++)
        ids_push(out, w[i]);
    if (w != stack) free(w);
}

// Whether the ASCII literal `lit` is at v[i..] under the pattern's IGNORECASE (text is lower
// case already; the regex module also folds U+017F ſ to s and U+212A K to k).
static size_t literal_at(const int32_t *v, size_t n, size_t i, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++) {
        if (i + k >= n) return 0;
        int32_t c = v[i + k], l = (uint8_t)lit[k];
        if (c >= 'A' && c <= 'Z') c += 32;
        if (c == 0x17F) c = 's';
        if (c == 0x212A) c = 'k';
        if (c != l) return 0;
    }
    return k;
}

// Pre-tokenizes cleaned text with CLIP's pattern (the convention's two special literals first,
// then 's 't 're 've 'm 'll 'd, letter runs, single numbers, runs of anything else but spaces)
// and appends the ids of every piece.
static void encode_clean(const ldmc_tokenizer *t, ldmc_tokens_convention c, const ldmc_cps *s,
                         id_list *out) {
    static const char *const specials[2][2] = {{"<|startoftext|>", "<|endoftext|>"},
                                               {"<start_of_text>", "<end_of_text>"}};
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    const int32_t *v = s->v;
    size_t n = s->n;
    for (size_t i = 0; i < n && out->n < out->limit;) {
        size_t k = 0;
        for (int j = 0; j < 2 && !k; j++)
            if ((k = literal_at(v, n, i, specials[c == LDMC_TOKENS_OPEN_CLIP][j]))) {
                bool exact = true; // the special id only for the exact text (the original's cache)
                for (size_t q = 0; q < k; q++)
                    exact &= v[i + q] == (uint8_t)specials[c == LDMC_TOKENS_OPEN_CLIP][j][q];
                if (exact)
                    ids_push(out, j ? t->vocab - 1 : t->vocab - 2);
                else
                    bpe(t, v + i, k, out);
            }
        for (size_t j = 0; j < sizeof contractions / sizeof *contractions && !k; j++)
            if ((k = literal_at(v, n, i, contractions[j]))) bpe(t, v + i, k, out);
        if (!k && ldmc_uni_letter(v[i])) {
            while (i + k < n && ldmc_uni_letter(v[i + k]))
                k++;
            bpe(t, v + i, k, out);
        } else if (!k && ldmc_uni_number(v[i])) {
            k = 1;
            bpe(t, v + i, k, out);
        } else if (!k && !ldmc_uni_space(v[i]) && v[i] != 0x345) {
            // (U+0345 folds to a letter under IGNORECASE: it matches no alternative and is
            // skipped like a space)
            while (i + k < n && !ldmc_uni_space(v[i + k]) && !ldmc_uni_letter(v[i + k]) &&
                   !ldmc_uni_number(v[i + k]) && v[i + k] != 0x345)
                k++;
            bpe(t, v + i, k, out);
        }
        i += k ? k : 1;
    }
}

static void encode_piece(const ldmc_tokenizer *t, ldmc_tokens_convention c, const char *text,
                         size_t len, id_list *out) {
    ldmc_cps s = {0};
    ldmc_cps_append_utf8(&s, text, len);
    ldmc_text_clean_cps(c, &s);
    encode_clean(t, c, &s, out);
    ldmc_cps_free(&s);
}

int ldmc_tokenize(const ldmc_tokenizer *t, ldmc_tokens_convention c, const char *text, int n,
                  int32_t *ids) {
    LDMC_CHECK(n >= 2, "tokenize: %d positions (at least 2)", n);
    const int sot = t->vocab - 2, eot = t->vocab - 1;
    // Content beyond what fits is never needed: HF keeps n - 2 tokens, open_clip n - 1 (its last
    // is overwritten by eot).
    id_list content = {.limit = c == LDMC_TOKENS_HF ? n - 2 : n - 1};
    if (c == LDMC_TOKENS_HF) { // the added special tokens are split out of the raw text first
        static const char *const specials[2] = {"<|startoftext|>", "<|endoftext|>"};
        const char *p = text;
        for (;;) {
            const char *hit = NULL;
            int which = 0;
            for (int j = 0; j < 2; j++) {
                const char *h = strstr(p, specials[j]);
                if (h && (!hit || h < hit)) hit = h, which = j;
            }
            encode_piece(t, c, p, hit ? (size_t)(hit - p) : strlen(p), &content);
            if (!hit) break;
            ids_push(&content, which ? eot : sot);
            p = hit + strlen(specials[which]);
        }
    } else {
        encode_piece(t, c, text, strlen(text), &content);
    }
    int m = 0;
    ids[m++] = sot;
    for (int i = 0; i < content.n && m < n - 1; i++)
        ids[m++] = content.v[i];
    ids[m] = eot;
    int end = m++;
    for (; m < n; m++)
        ids[m] = c == LDMC_TOKENS_HF ? eot : 0;
    free(content.v);
    return end;
}
