// Text as code points for the tokenizer: a growable buffer, UTF-8 in and out (an invalid byte
// sequence becomes U+FFFD, as a decoder with errors="replace" does), and the character classes
// and case mapping the CLIP tokenizer needs, from utf8proc. Tested through tests/test_text.c.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ldmc_cps {
    int32_t *v;
    size_t n, cap;
} ldmc_cps;

void ldmc_cps_push(ldmc_cps *s, int32_t c);
void ldmc_cps_free(ldmc_cps *s);
// Decodes UTF-8 (len bytes) and appends; returns how many invalid sequences became U+FFFD.
size_t ldmc_cps_append_utf8(ldmc_cps *s, const char *text, size_t len);
// The code points [from, to) as UTF-8, appended to a malloc'ed string *out of length *len.
void ldmc_cps_to_utf8(const int32_t *v, size_t n, char **out, size_t *len);
// The code points [from, to) as one malloc'ed NUL-terminated UTF-8 string.
char *ldmc_cps_utf8(const int32_t *v, size_t n);

// Unicode White_Space (what the regex module's \s matches).
bool ldmc_uni_space(int32_t c);
bool ldmc_uni_letter(int32_t c); // \p{L}
bool ldmc_uni_number(int32_t c); // \p{N}
// Replaces s with its NFC, NFKC of each code point.
void ldmc_uni_nfc(ldmc_cps *s);
// The NFKC of one code point into out[4]; returns the count (the code point itself when none).
int ldmc_uni_nfkc_char(int32_t c, int32_t out[4]);
// Python's str.lower(): full lowercase mapping (U+0130 -> i + U+0307) and Greek final sigma.
void ldmc_uni_lower(ldmc_cps *s);
