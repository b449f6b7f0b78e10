#!/usr/bin/env python3
"""check_abi: libmpool exports exactly the functions its public headers
declare, each under a named symbol version of client/libmpool.sym, and the
soname is the one client/meson.build promises.

Usage: check_abi.py LIBMPOOL.so LIBMPOOL.sym SONAME HEADER...
"""
import re
import subprocess
import sys
import unittest

ARGS = []


def check(lib, symfile, soname, *headers):
    """The failures, as sentences."""
    failures = []

    # Every function the headers declare (not typedefs, macros or the
    # static inline helpers of mpool-event.h).
    declared = set()
    for h in headers:
        text = open(h).read()
        text = re.sub(r'/\*.*?\*/', '', text, flags=re.S)
        for m in re.finditer(r'^(?!typedef|static|#)[A-Za-z][^;(]*?\b(mpool_\w+)\s*\(', text, flags=re.M):
            declared.add(m.group(1))

    # The names the version script lists, by node.
    script = re.sub(r'/\*.*?\*/', '', open(symfile).read(), flags=re.S)
    listed = {}
    for node, body in re.findall(r'(MPOOL_[0-9.]+)\s*\{(.*?)\}', script, flags=re.S):
        glob = body.split('local:')[0].replace('global:', '')
        if '*' in glob:
            failures.append('node %s exports a wildcard' % node)
        for name in re.findall(r'(\w+)\s*;', glob):
            listed[name] = node

    # What the library really exports, and under which version.
    out = subprocess.run(['readelf', '--dyn-syms', '-W', lib], check=True,
                         capture_output=True, text=True).stdout
    exported = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 8 or f[6] in ('UND', 'ABS') or f[3] not in ('FUNC', 'OBJECT'):
            continue
        name, _, version = f[7].partition('@@')
        exported[name] = version
    dyn = subprocess.run(['readelf', '-d', '-W', lib], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r'\(SONAME\).*\[(.*)\]', dyn)
    if not m or m.group(1) != soname:
        failures.append('soname %s, expected %s' % (m.group(1) if m else 'none', soname))

    for name in sorted(set(exported) - set(listed)):
        failures.append('%s is exported but not in %s' % (name, symfile))
    for name, version in sorted(exported.items()):
        if name in listed and version != listed[name]:
            failures.append('%s is exported as version %r, the script says %s'
                            % (name, version, listed[name]))
    for name in sorted(declared - set(exported)):
        failures.append('%s is declared in a public header but not exported' % name)
    for name in sorted(set(exported) - declared):
        failures.append('%s is exported but no public header declares it' % name)
    for name in sorted(set(listed) - set(exported)):
        failures.append('%s is in %s but the library does not define it' % (name, symfile))

    print('check_abi: %d functions declared, %d exported, %d failures'
          % (len(declared), len(exported), len(failures)))
    return failures


# unittest, so that tests/run-all counts it like the other Python suites.
class Abi(unittest.TestCase):
    def test_exports_match_headers_and_version_script(self):
        failures = check(*ARGS)
        self.assertEqual(failures, [], '\n'.join(failures))


if __name__ == '__main__':
    ARGS = sys.argv[1:]
    unittest.main(argv=sys.argv[:1])
