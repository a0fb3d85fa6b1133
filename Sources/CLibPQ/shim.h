// libpq's client API, plus shims for the macros Swift cannot import.
#pragma once
#include <libpq-fe.h>

// PG_DIAG_SQLSTATE is a character-literal macro, which Swift does not import.
static inline char *clibpq_result_sqlstate(const PGresult *res) {
    return PQresultErrorField(res, PG_DIAG_SQLSTATE);
}

// PG_DIAG_MESSAGE_PRIMARY is a character-literal macro, which Swift does not import.
static inline char *clibpq_result_primary_message(const PGresult *res) {
    return PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
}
