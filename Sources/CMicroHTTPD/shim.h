// libmicrohttpd, plus static inline shims for what Swift cannot call directly (variadic MHD_start_daemon).
#pragma once
#include <stdarg.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <microhttpd.h>
