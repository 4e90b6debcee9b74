// The tokenizer's text cleanup on code points (see tokenizer.h and docs/text.md): ftfy's
// deterministic fixes, then the convention's HTML unescaping, whitespace collapsing and lower
// case. Tested through tests/test_text.c.
#pragma once
#include "text/tokenizer.h"
#include "text/unicode.h"

void ldmc_text_clean_cps(ldmc_tokens_convention convention, ldmc_cps *s);
// ftfy's fix_text without its mojibake repair (FTFY_SUBSET of docs/text.md), UTF-8 in and out
// (malloc'ed).
char *ldmc_text_ftfy(const char *text);
// Python's html.unescape (numeric and named character references, the HTML5 rules).
void ldmc_html_unescape(ldmc_cps *s);
