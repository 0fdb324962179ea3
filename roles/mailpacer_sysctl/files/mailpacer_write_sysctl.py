#!/usr/bin/env python3
"""Write saved sysctl values back (rollback); prints the keys it changed as JSON.

Usage: mailpacer_write_sysctl.py JSON_OBJECT   ({"key": "value", ...})
Only keys whose live value differs are written; an empty value is valid
(ip_local_reserved_ports), which `sysctl -w` cannot express.
"""

import json
import sys

changed, failed = {}, {}
for key, value in json.loads(sys.argv[1]).items():
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, encoding="utf-8") as f:
            live = " ".join(f.read().split())
        if live == " ".join(str(value).split()):
            continue
        with open(path, "w", encoding="utf-8") as f:
            f.write(str(value))
        changed[key] = {"from": live, "to": value}
    except OSError as e:
        failed[key] = str(e)
json.dump({"changed": changed, "failed": failed}, sys.stdout, sort_keys=True)
sys.exit(1 if failed else 0)
