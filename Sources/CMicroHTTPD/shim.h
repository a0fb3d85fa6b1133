// libmicrohttpd, plus static inline shims for what Swift cannot call directly (variadic MHD_start_daemon).
#pragma once
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <microhttpd.h>

// Keeps the path and query arguments percent-encoded: statefn routes on the raw path and decodes the query itself.
static inline size_t cmhd_keep_escaped(void *cls, struct MHD_Connection *connection, char *s) {
    (void)cls;
    (void)connection;
    return strlen(s);
}

// The URI as soon as its request line is in, before libmicrohttpd parses the query into its connection's memory
// pool: a query of thousands of parameters would exhaust the pool, and 0.9.75 then has no memory left to answer at
// all. The query is cut after its first `keep` parameters (`cls`), so at most that many are parsed; the handler
// sees `keep` of them and refuses the request if that is over its bound. Returns the request's initial context,
// which must be NULL.
static inline void *cmhd_bound_query(void *cls, const char *uri, struct MHD_Connection *connection) {
    (void)connection;
    size_t keep = (size_t)(uintptr_t)cls;
    char *query = strchr(uri, '?');
    if (query == NULL) return NULL;
    size_t seen = 1;
    for (char *at = query + 1; *at != 0; at++) {
        // The buffer is libmicrohttpd's own, writable; it hands the URI over as const only by its signature.
        if (*at == '&' && ++seen > keep) {
            *at = 0;
            break;
        }
    }
    return NULL;
}

// Exists because MHD_start_daemon is variadic. Serves on an already bound and listening socket, with a thread pool
// of `threads` epoll loops, at most `per_ip_limit` connections from one address (0: no limit), at most
// `query_parameters` query parameters parsed per request (`cmhd_bound_query`), and calls
// `handler`, `completed`, `notify` (a connection opened or closed) and `logger` with `cls`.
static inline struct MHD_Daemon *cmhd_start_daemon(
    unsigned int flags, int listen_fd, unsigned int threads, unsigned int timeout_seconds,
    unsigned int connection_limit, unsigned int per_ip_limit, unsigned int query_parameters,
    MHD_AccessHandlerCallback handler,
    MHD_RequestCompletedCallback completed, MHD_NotifyConnectionCallback notify, MHD_LogCallback logger, void *cls) {
    return MHD_start_daemon(
        flags, 0, NULL, NULL, handler, cls,
        MHD_OPTION_EXTERNAL_LOGGER, logger, cls,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)listen_fd,
        MHD_OPTION_THREAD_POOL_SIZE, threads,
        MHD_OPTION_CONNECTION_TIMEOUT, timeout_seconds,
        MHD_OPTION_CONNECTION_LIMIT, connection_limit,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip_limit,
        MHD_OPTION_NOTIFY_COMPLETED, completed, cls,
        MHD_OPTION_NOTIFY_CONNECTION, notify, cls,
        MHD_OPTION_UNESCAPE_CALLBACK, cmhd_keep_escaped, NULL,
        MHD_OPTION_URI_LOG_CALLBACK, cmhd_bound_query, (void *)(uintptr_t)query_parameters,
        MHD_OPTION_END);
}

// The connection's socket, or -1: the header timeout shuts down a connection whose request head is too slow.
static inline int cmhd_connection_fd(struct MHD_Connection *connection) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info == NULL ? -1 : info->connect_fd;
}

// Exists because MHD_get_connection_info returns a union Swift imports awkwardly: the peer's IP address as text
// (inet_ntop), or "" when it is not known.
static inline void cmhd_client_address(struct MHD_Connection *connection, char *out, size_t size) {
    out[0] = 0;
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (info == NULL || info->client_addr == NULL) return;
    const struct sockaddr *address = info->client_addr;
    if (address->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)address)->sin_addr, out, (socklen_t)size);
    } else if (address->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)address)->sin6_addr, out, (socklen_t)size);
    }
}
