// MariaDB Connector/C (Debian libmariadb-dev; pkg-config libmariadb). Used only with the MySQL trait.
#include <mysql.h>
#include <errmsg.h>
#include <mysqld_error.h>
