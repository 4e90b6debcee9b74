// The tokenizer's cleanup (see text_clean.h, docs/text.md). Tested through tests/test_text.c.
#include "text/text_clean.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

typedef struct html_entity {
    const char *name;
    int32_t cp[2];
} html_entity;

typedef struct ftfy_entity {
    const char *key; // "&name;"
    int32_t cp[3];
} ftfy_entity;

#include "text/html_entities.inc"

#define COUNT(a) (sizeof(a) / sizeof *(a))

// Both entity tables are sorted by their first member, a name: bsearch on it.
static int by_name(const void *key, const void *entry) {
    return strcmp(key, *(const char *const *)entry);
}

static const html_entity *entity_find(const char *name) {
    return bsearch(name, html_entities, COUNT(html_entities), sizeof *html_entities, by_name);
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

// ---- ftfy's deterministic fixes: fix_text without fix_encoding ----------------------------------
// tests/ref/data/clip_cleanup_rules.md §1 has every rule with its source; the numbers below are
// its sections.

static const ftfy_entity *ftfy_entity_find(const char *key) {
    return bsearch(key, ftfy_entities, COUNT(ftfy_entities), sizeof *ftfy_entities, by_name);
}

static bool ascii_alnum(int32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// §1.3: every match of &#?[0-9A-Za-z]{1,24}; is ftfy's entity, or a numeric reference as
// html.unescape decodes it unless that gives a ';', or left as it is.
static void ftfy_unescape_html(ldmc_cps *s) {
    ldmc_cps out = {0};
    for (size_t i = 0; i < s->n;) {
        size_t j = i + 1, k;
        if (s->v[i] != '&') goto keep;
        if (j < s->n && s->v[j] == '#') j++;
        for (k = j; k < s->n && k - j < 24 && ascii_alnum(s->v[k]); k++)
            ;
        if (k == j || k >= s->n || s->v[k] != ';') goto keep;
        k++; // the match is [i, k)
        char key[32];
        for (size_t q = i; q < k; q++)
            key[q - i] = (char)s->v[q];
        key[k - i] = 0;
        const ftfy_entity *e = ftfy_entity_find(key);
        if (e) {
            for (int q = 0; q < 3 && e->cp[q]; q++)
                ldmc_cps_push(&out, e->cp[q]);
            i = k;
            continue;
        }
        if (s->v[i + 1] == '#') {
            ldmc_cps ref = {0};
            for (size_t q = i; q < k; q++)
                ldmc_cps_push(&ref, s->v[q]);
            ldmc_html_unescape(&ref);
            bool semicolon = false;
            for (size_t q = 0; q < ref.n; q++)
                semicolon |= ref.v[q] == ';';
            if (!semicolon) {
                for (size_t q = 0; q < ref.n; q++)
                    ldmc_cps_push(&out, ref.v[q]);
                ldmc_cps_free(&ref);
                i = k;
                continue;
            }
            ldmc_cps_free(&ref);
        }
    keep:
        ldmc_cps_push(&out, s->v[i++]);
    }
    ldmc_cps_free(s);
    *s = out;
}

// §1.4: U+0080..U+009F as the windows-1252 characters of those bytes (html.unescape's table).
static int32_t c1_control(int32_t c) {
    for (size_t q = 0; q < COUNT(html_invalid_charrefs); q++)
        if (html_invalid_charrefs[q][0] == c && c >= 0x80) return html_invalid_charrefs[q][1];
    return c;
}

// §1.5
static const int32_t ligatures[][4] = {
    {0x132, 'I', 'J'},   {0x133, 'i', 'j'},   {0x149, 0x2BC, 'n'},  {0x1C4, 'D', 0x17D},
    {0x1C5, 'D', 0x17E}, {0x1C6, 'd', 0x17E}, {0x1C7, 'L', 'J'},    {0x1C8, 'L', 'j'},
    {0x1C9, 'l', 'j'},   {0x1CA, 'N', 'J'},   {0x1CB, 'N', 'j'},    {0x1CC, 'n', 'j'},
    {0x1F1, 'D', 'Z'},   {0x1F2, 'D', 'z'},   {0x1F3, 'd', 'z'},    {0xFB00, 'f', 'f'},
    {0xFB01, 'f', 'i'},  {0xFB02, 'f', 'l'},  {0xFB05, 0x17F, 't'}, {0xFB06, 's', 't'},
};

// One pass of the character fixes §1.4-§1.8 (c1 controls, ligatures, width, quotes, line
// breaks), in ftfy's order; each is a per-character map except \r\n.
static void char_fixes(ldmc_cps *s) {
    ldmc_cps out = {0};
    for (size_t i = 0; i < s->n; i++) { // §1.4
        s->v[i] = c1_control(s->v[i]);
    }
    for (size_t i = 0; i < s->n; i++) {
        int32_t c = s->v[i];
        if (c == 0xFB03 || c == 0xFB04) { // ffi, ffl
            ldmc_cps_push(&out, 'f');
            ldmc_cps_push(&out, 'f');
            ldmc_cps_push(&out, c == 0xFB03 ? 'i' : 'l');
            continue;
        }
        bool done = false;
        for (size_t q = 0; q < COUNT(ligatures) && !done; q++)
            if (ligatures[q][0] == c) {
                ldmc_cps_push(&out, ligatures[q][1]);
                ldmc_cps_push(&out, ligatures[q][2]);
                done = true;
            }
        if (!done) ldmc_cps_push(&out, c);
    }
    ldmc_cps_free(s);
    *s = out;
    out = (ldmc_cps){0};
    for (size_t i = 0; i < s->n; i++) { // §1.6, then §1.7 on the result
        int32_t c = s->v[i], w[4];
        int nw = 1;
        w[0] = c;
        if (c == 0x3000)
            w[0] = ' ';
        else if (c >= 0xFF01 && c <= 0xFFEF)
            nw = ldmc_uni_nfkc_char(c, w);
        for (int q = 0; q < nw; q++) {
            int32_t d = w[q];
            if (d == 0x2BC || (d >= 0x2018 && d <= 0x201B))
                d = '\'';
            else if (d >= 0x201C && d <= 0x201F)
                d = '"';
            ldmc_cps_push(&out, d);
        }
    }
    ldmc_cps_free(s);
    *s = out;
    size_t k = 0; // §1.8
    for (size_t i = 0; i < s->n; i++) {
        int32_t c = s->v[i];
        if (c == '\r' && i + 1 < s->n && s->v[i + 1] == '\n') continue; // the \n follows
        if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
        s->v[k++] = c;
    }
    s->n = k;
}

static bool ascii_letter(int32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// §1.10, §1.11: ESC [ (digits | ;)* letter removed, then the control characters.
static void remove_escapes_and_controls(ldmc_cps *s) {
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i] == 0x1B && i + 1 < s->n && s->v[i + 1] == '[') {
            size_t j = i + 2;
            while (j < s->n &&
                   (s->v[j] == ';' || utf8proc_category(s->v[j]) == UTF8PROC_CATEGORY_ND))
                j++;
            if (j < s->n && ascii_letter(s->v[j])) {
                i = j;
                continue;
            }
        }
        s->v[k++] = s->v[i];
    }
    s->n = k;
    k = 0;
    for (size_t i = 0; i < s->n; i++) {
        int32_t c = s->v[i];
        bool control = (c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
                       (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
        if (!control) s->v[k++] = c;
    }
    s->n = k;
}

static bool same(const ldmc_cps *a, const ldmc_cps *b) {
    return a->n == b->n && (!a->n || !memcmp(a->v, b->v, a->n * sizeof *a->v));
}

// §1.2: the fixes until a whole pass changes nothing.
static void fix_segment(ldmc_cps *s, bool unescape) {
    ldmc_cps before = {0};
    for (;;) {
        before.n = 0;
        for (size_t i = 0; i < s->n; i++)
            ldmc_cps_push(&before, s->v[i]);
        if (unescape) ftfy_unescape_html(s);
        char_fixes(s);
        remove_escapes_and_controls(s);
        ldmc_uni_nfc(s);
        if (same(s, &before)) break;
    }
    ldmc_cps_free(&before);
}

// §1.1: segments end after each \n; HTML unescaping is off from the first segment with a '<' on.
static void ftfy_subset(ldmc_cps *s) {
    ldmc_cps out = {0}, seg = {0};
    bool unescape = true;
    for (size_t pos = 0; pos < s->n;) {
        size_t end = pos;
        while (end < s->n && s->v[end] != '\n')
            end++;
        if (end < s->n) end++;
        seg.n = 0;
        for (size_t i = pos; i < end; i++) {
            ldmc_cps_push(&seg, s->v[i]);
            if (s->v[i] == '<') unescape = false;
        }
        fix_segment(&seg, unescape);
        for (size_t i = 0; i < seg.n; i++)
            ldmc_cps_push(&out, seg.v[i]);
        pos = end;
    }
    ldmc_cps_free(&seg);
    ldmc_cps_free(s);
    *s = out;
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

char *ldmc_text_ftfy(const char *text) {
    ldmc_cps s = {0};
    ldmc_cps_append_utf8(&s, text, strlen(text));
    ftfy_subset(&s);
    char *out = ldmc_cps_utf8(s.v, s.n);
    ldmc_cps_free(&s);
    return out;
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
