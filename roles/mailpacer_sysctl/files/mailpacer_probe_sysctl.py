#!/usr/bin/env python3
"""Probe sysctl keys; prints {key: {exists, writable, value, error}} as JSON.

Usage: mailpacer_probe_sysctl.py [--read-only] KEY...
"writable" is decided by writing the key's *current* value back (a no-op for the kernel):
file permissions lie inside containers (EROFS on a read-only /proc/sys, EINVAL/EPERM for a
per-netns key the kernel keeps global), only a real write tells.
--read-only skips that test (verify.yml: live checks, no writes).
"""

import errno
import json
import sys


def probe(key, write_test=True):
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except FileNotFoundError:
        return {"exists": False, "writable": False, "value": None, "error": "ENOENT"}
    except OSError as e:
        return {
            "exists": True,
            "writable": False,
            "value": None,
            "error": errno.errorcode.get(e.errno, str(e)),
        }
    if not write_test:
        return {"exists": True, "writable": None, "value": value, "error": None}
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(value)
    except OSError as e:
        return {
            "exists": True,
            "writable": False,
            "value": value,
            "error": f"{errno.errorcode.get(e.errno, '?')} ({e.strerror})",
        }
    return {"exists": True, "writable": True, "value": value, "error": None}


args = sys.argv[1:]
write_test = "--read-only" not in args
keys = [a for a in args if a != "--read-only"]
json.dump({key: probe(key, write_test) for key in keys}, sys.stdout, sort_keys=True)
