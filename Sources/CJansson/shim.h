// jansson, plus static inline shims for its macros (Swift cannot call C macros).
#pragma once
#include <jansson.h>

// json_typeof is a macro that reads the struct field; Swift needs a function to call.
static inline json_type cjansson_typeof(const json_t *json) { return json_typeof(json); }

// json_error_code shares its name with `enum json_error_code`, which Swift cannot tell apart from the function.
static inline int cjansson_error_code(const json_error_t *error) { return (int)json_error_code(error); }
