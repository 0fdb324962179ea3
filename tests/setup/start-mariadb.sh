#!/usr/bin/env bash
# Make sure the machine's MariaDB answers on 127.0.0.1:3306 before the tests run.
# PID 1 is not systemd here, so the server is started directly when it is down.
set -euo pipefail
ping() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; }
ping && exit 0
echo "starting MariaDB (it was not answering on 127.0.0.1:3306)" >&2
install -d -o mysql -g mysql /run/mysqld 2>/dev/null || mkdir -p /run/mysqld
start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
for _ in $(seq 1 60); do
    ping && exit 0
    sleep 0.5
done
echo "MariaDB did not answer on 127.0.0.1:3306 within 30 s" >&2
exit 1
