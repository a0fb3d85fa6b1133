// jansson, plus static inline shims for its macros (Swift cannot call C macros).
#pragma once
#include <jansson.h>
