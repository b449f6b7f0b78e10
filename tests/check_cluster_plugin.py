#!/usr/bin/env python3
"""check_cluster_plugin: without cluster-url, mpoold needs no NATS.

- mpoold has no DT_NEEDED on libnats or libevent_pthreads: those are the
  cluster plugin's (mpool-cluster.so), which mpoold opens only when
  cluster-url is set.
- mpoold exports no symbol of its own (the plugin gets the daemon's calls
  as a table), so no task module it opens can bind a name of its own to
  the daemon's; the plugin exports only its table.
- The plugin opened beside a copy of mpoold resolves every symbol
  (dlopen with RTLD_NOW).
- A plugin that does not load, or is not from this build, stops mpoold at
  config check with the reason and the path (exit 2); without cluster-url
  the same file is never opened.

Usage: check_cluster_plugin.py MPOOLD PLUGIN BAD_ABI_PLUGIN
"""
import os
import shutil
import subprocess
import sys
import tempfile

URL = ['--cluster-url', 'nats://127.0.0.1:4222']


def needed(path):
    out = subprocess.run(['readelf', '-d', '-W', path], check=True, capture_output=True,
                         text=True).stdout
    return [line.split('[', 1)[1].rstrip(']') for line in out.splitlines()
            if '(NEEDED)' in line]


def exported(path):
    """The dynamic symbols path defines, without glibc's copy relocations
    (stdout, optind, ...: versioned GLIBC_*)."""
    out = subprocess.run(['nm', '-D', '--defined-only', path], check=True,
                         capture_output=True, text=True).stdout
    return [line.split()[-1] for line in out.splitlines()
            if line.strip() and '@GLIBC' not in line]


def main():
    mpoold, plugin, bad_abi = sys.argv[1:4]
    failures = []

    libs = needed(mpoold)
    for lib in libs:
        if lib.startswith(('libnats', 'libevent_pthreads')):
            failures.append('mpoold needs %s at run time' % lib)
    if exported(mpoold):
        failures.append('mpoold exports %s' % ', '.join(exported(mpoold)))
    if exported(plugin) != ['mpool_cluster_plugin']:
        failures.append('the plugin exports %s' % ', '.join(exported(plugin)))
    if not any(lib.startswith('libnats') for lib in needed(plugin)):
        failures.append('the plugin does not link libnats (wrong file?)')

    # mpoold looks for the plugin beside itself first: a copy of it in a
    # directory of our own decides which plugin it finds.
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, 'mpoold')
        beside = os.path.join(d, 'mpool-cluster.so')
        shutil.copy(mpoold, exe)

        def run(args, status, says, what):
            p = subprocess.run([exe, '--config', '/dev/null', '--print-config'] + args,
                               capture_output=True, text=True, timeout=30)
            out = p.stdout + p.stderr
            if p.returncode != status or says not in out:
                failures.append('%s: exit %d, wanted %d and %r; said:\n%s'
                                % (what, p.returncode, status, says, out))

        shutil.copy(plugin, beside)
        run(URL, 0, 'cluster-url = nats://127.0.0.1:4222', 'the real plugin')

        with open(beside, 'w') as f:
            f.write('not a shared object\n')
        run(URL, 2, 'cluster-url is set but the cluster plugin %s cannot be loaded: ' % beside,
            'a file that is no plugin')
        run([], 0, '#cluster-url', 'no cluster-url, a broken plugin beside')

        shutil.copy(bad_abi, beside)
        run(URL, 2, 'cannot be loaded: it is not from this build', 'a plugin of another ABI')

    for f in failures:
        print('FAIL:', f)
    if not failures:
        print('mpoold needs: %s' % ', '.join(libs))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
