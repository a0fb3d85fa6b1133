// libpq's client API.
#pragma once
#include <libpq-fe.h>
