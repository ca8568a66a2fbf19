// libpq (Debian libpq-dev; pkg-config libpq). Used only with the PostgreSQL trait.
#include <libpq-fe.h>
