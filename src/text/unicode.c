// Code points and Unicode classes (see unicode.h). Tested through tests/test_text.c.
#include "text/unicode.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"

void ldmc_cps_push(ldmc_cps *s, int32_t c) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        LDMC_CHECK(s->v, "out of memory");
    }
    s->v[s->n++] = c;
}

void ldmc_cps_free(ldmc_cps *s) {
    free(s->v);
    *s = (ldmc_cps){0};
}

size_t ldmc_cps_append_utf8(ldmc_cps *s, const char *text, size_t len) {
    const uint8_t *p = (const uint8_t *)text;
    size_t invalid = 0;
    while (len > 0) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(p, (utf8proc_ssize_t)len, &c);
        if (k <= 0) { // one byte of an invalid sequence
            c = 0xFFFD;
            k = 1;
            invalid++;
        }
        ldmc_cps_push(s, c);
        p += k;
        len -= (size_t)k;
    }
    return invalid;
}

void ldmc_cps_to_utf8(const int32_t *v, size_t n, char **out, size_t *len) {
    char *d = realloc(*out, *len + 4 * n + 1);
    LDMC_CHECK(d, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int32_t c = v[i];
        if (!utf8proc_codepoint_valid(c)) c = 0xFFFD; // lone surrogates (from &#xD800;)
        *len += (size_t)utf8proc_encode_char(c, (uint8_t *)d + *len);
    }
    d[*len] = 0;
    *out = d;
}

char *ldmc_cps_utf8(const int32_t *v, size_t n) {
    char *s = NULL;
    size_t len = 0;
    ldmc_cps_to_utf8(v, n, &s, &len);
    return s;
}

bool ldmc_uni_space(int32_t c) {
    if ((c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85) return true;
    if (c < 0xA0) return false;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

bool ldmc_uni_letter(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

bool ldmc_uni_number(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

// s mapped by utf8proc with `options` (NFC: COMPOSE; NFKC: COMPOSE | COMPAT).
static void map(ldmc_cps *s, int options) {
    if (!s->n) return;
    options |= UTF8PROC_STABLE;
    char *utf8 = NULL;
    size_t utf8_len = 0;
    ldmc_cps_to_utf8(s->v, s->n, &utf8, &utf8_len);
    utf8proc_uint8_t *mapped = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)utf8, (utf8proc_ssize_t)utf8_len,
                                        &mapped, (utf8proc_option_t)options);
    free(utf8);
    LDMC_CHECK(len >= 0, "utf8proc: %s", utf8proc_errmsg(len));
    s->n = 0;
    ldmc_cps_append_utf8(s, (const char *)mapped, (size_t)len);
    free(mapped);
}

void ldmc_uni_nfc(ldmc_cps *s) { map(s, UTF8PROC_COMPOSE); }

int ldmc_uni_nfkc_char(int32_t c, int32_t out[4]) {
    ldmc_cps one = {0};
    ldmc_cps_push(&one, c);
    map(&one, UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    int n = (int)(one.n < 4 ? one.n : 4);
    memcpy(out, one.v, (size_t)n * sizeof *out);
    ldmc_cps_free(&one);
    return n;
}

// Unicode's Cased and Case_Ignorable properties as far as the final-sigma rule needs them.
static bool cased(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT ||
           utf8proc_islower(c) || utf8proc_isupper(c);
}

static bool case_ignorable(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_ME || k == UTF8PROC_CATEGORY_CF ||
           k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_SK || c == '\'' || c == '.' ||
           c == ':' || c == 0xB7 || c == 0x2019 || c == 0x2018 || c == 0x2024 || c == 0xAD;
}

// Python's rule: Σ lowers to ς when a cased letter precedes it (case-ignorables skipped) and none
// follows.
static bool final_sigma(const int32_t *v, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && case_ignorable(v[j - 1]))
        j--;
    if (j == 0 || !cased(v[j - 1])) return false;
    j = i + 1;
    while (j < n && case_ignorable(v[j]))
        j++;
    return j == n || !cased(v[j]);
}

void ldmc_uni_lower(ldmc_cps *s) {
    ldmc_cps out = {0};
    for (size_t i = 0; i < s->n; i++) {
        int32_t c = s->v[i];
        if (c == 0x130) { // İ: the one unconditional multi-character lowercase mapping
            ldmc_cps_push(&out, 'i');
            ldmc_cps_push(&out, 0x307);
        } else if (c == 0x3A3) {
            ldmc_cps_push(&out, final_sigma(s->v, s->n, i) ? 0x3C2 : 0x3C3);
        } else {
            ldmc_cps_push(&out,
                          c < 0x80 ? (c >= 'A' && c <= 'Z' ? c + 32 : c) : utf8proc_tolower(c));
        }
    }
    ldmc_cps_free(s);
    *s = out;
}
