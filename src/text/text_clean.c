// The tokenizer's cleanup (see text_clean.h, docs/text.md). Tested through tests/test_text.c.
#include "text/text_clean.h"

#include <stdlib.h>
#include <string.h>

typedef struct html_entity {
    const char *name;
    int32_t cp[2];
} html_entity;

#include "text/html_entities.inc"

#define COUNT(a) (sizeof(a) / sizeof *(a))

static const html_entity *entity_find(const char *name) {
    size_t lo = 0, hi = COUNT(html_entities);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(html_entities[mid].name, name);
        if (!c) return &html_entities[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void push_entity(ldmc_cps *out, const html_entity *e) {
    ldmc_cps_push(out, e->cp[0]);
    if (e->cp[1]) ldmc_cps_push(out, e->cp[1]);
}

static bool is_hex(int32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Python's html.unescape for the reference at v[i] == '&'. Returns the code points consumed (0:
// no reference there; the '&' stays).
static size_t charref(const int32_t *v, size_t n, size_t i, ldmc_cps *out) {
    size_t j = i + 1;
    if (j < n && v[j] == '#') { // &#123; &#x7B; (the ';' optional)
        bool hex = j + 1 < n && (v[j + 1] == 'x' || v[j + 1] == 'X');
        size_t k = j + 1 + hex, start = k;
        uint64_t num = 0;
        while (k < n && (hex ? is_hex(v[k]) : (v[k] >= '0' && v[k] <= '9'))) {
            int d = v[k] <= '9' ? v[k] - '0' : (v[k] | 32) - 'a' + 10;
            num = num > 0x110000 ? num : num * (hex ? 16 : 10) + (uint64_t)d;
            k++;
        }
        if (k == start) return 0;
        if (k < n && v[k] == ';') k++;
        for (size_t q = 0; q < COUNT(html_invalid_charrefs); q++)
            if ((uint64_t)html_invalid_charrefs[q][0] == num) {
                ldmc_cps_push(out, html_invalid_charrefs[q][1]);
                return k - i;
            }
        if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
            ldmc_cps_push(out, 0xFFFD);
            return k - i;
        }
        for (size_t q = 0; q < COUNT(html_invalid_codepoints); q++)
            if ((uint64_t)html_invalid_codepoints[q] == num) return k - i;
        ldmc_cps_push(out, (int32_t)num);
        return k - i;
    }
    // A name: 1 to 32 of anything but \t \n \f space < & # ;, then an optional ';'.
    size_t k = j;
    while (k < n && k - j < 32 && v[k] != '\t' && v[k] != '\n' && v[k] != '\f' && v[k] != ' ' &&
           v[k] != '<' && v[k] != '&' && v[k] != '#' && v[k] != ';')
        k++;
    if (k == j) return 0;
    if (k < n && v[k] == ';') k++;
    char name[40];
    size_t len = 0;
    bool ascii = true;
    for (size_t q = j; q < k; q++) {
        ascii &= v[q] < 0x80;
        name[len++] = (char)v[q];
    }
    name[len] = 0;
    if (ascii) {
        const html_entity *e = entity_find(name);
        if (e) {
            push_entity(out, e);
            return k - i;
        }
    }
    // The longest prefix of two or more characters that is a name (those without ';').
    for (size_t x = len - 1; x > 1; x--) {
        bool prefix_ascii = true;
        for (size_t q = 0; q < x; q++)
            prefix_ascii &= v[j + q] < 0x80;
        if (!prefix_ascii) continue;
        char prefix[40];
        memcpy(prefix, name, x);
        prefix[x] = 0;
        const html_entity *e = entity_find(prefix);
        if (e) {
            push_entity(out, e);
            return 1 + x; // the rest of the name stays as it was
        }
    }
    return 0;
}

void ldmc_html_unescape(ldmc_cps *s) {
    ldmc_cps out = {0};
    for (size_t i = 0; i < s->n;) {
        size_t k = s->v[i] == '&' ? charref(s->v, s->n, i, &out) : 0;
        if (!k)
            ldmc_cps_push(&out, s->v[i++]);
        else
            i += k;
    }
    ldmc_cps_free(s);
    *s = out;
}

// ---- ftfy's deterministic fixes (FTFY_SUBSET in docs/text.md)
// ------------------------------------

static void ftfy_subset(ldmc_cps *s) {
    (void)s; // filled in below
}

// Whitespace runs to one space, without leading or trailing spaces.
static void collapse_whitespace(ldmc_cps *s) {
    size_t k = 0;
    bool space = false;
    for (size_t i = 0; i < s->n; i++) {
        if (ldmc_uni_space(s->v[i])) {
            space = true;
            continue;
        }
        if (space && k) s->v[k++] = ' ';
        space = false;
        s->v[k++] = s->v[i];
    }
    s->n = k;
}

void ldmc_text_clean_cps(ldmc_tokens_convention c, ldmc_cps *s) {
    ftfy_subset(s);
    if (c == LDMC_TOKENS_OPEN_CLIP) {
        ldmc_html_unescape(s);
        ldmc_html_unescape(s);
    }
    collapse_whitespace(s);
    ldmc_uni_lower(s);
}

char *ldmc_text_clean(ldmc_tokens_convention c, const char *text) {
    ldmc_cps s = {0};
    ldmc_cps_append_utf8(&s, text, strlen(text));
    ldmc_text_clean_cps(c, &s);
    char *out = ldmc_cps_utf8(s.v, s.n);
    ldmc_cps_free(&s);
    return out;
}
