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
import unittest

URL = ['--cluster-url', 'nats://127.0.0.1:4222']
MPOOLD = PLUGIN = BAD_ABI = None


def needed(path):
    out = subprocess.run(['readelf', '-d', '-W', path], check=True, capture_output=True,
                         text=True).stdout
    return [line.split('[', 1)[1].rstrip(']') for line in out.splitlines()
            if '(NEEDED)' in line]


# What a sanitizer build adds to every object's dynamic symbols.
SANITIZER = ('__asan', '__odr_asan', '__ubsan', '__sanitizer', '__lsan')


def exported(path):
    """The dynamic symbols path defines, without glibc's copy relocations
    (stdout, optind, ...: versioned GLIBC_*) and a sanitizer's own."""
    out = subprocess.run(['nm', '-D', '--defined-only', path], check=True,
                         capture_output=True, text=True).stdout
    return [line.split()[-1] for line in out.splitlines()
            if line.strip() and '@GLIBC' not in line
            and not line.split()[-1].startswith(SANITIZER)]


class ClusterPlugin(unittest.TestCase):
    def test_mpoold_needs_no_nats(self):
        libs = needed(MPOOLD)
        self.assertEqual([l for l in libs if l.startswith(('libnats', 'libevent_pthreads'))],
                         [], 'mpoold needs: %s' % ', '.join(libs))
        self.assertTrue(any(l.startswith('libnats') for l in needed(PLUGIN)),
                        'the plugin does not link libnats (wrong file?)')

    def test_exports(self):
        self.assertEqual(exported(MPOOLD), [], 'mpoold exports names of its own')
        self.assertEqual(exported(PLUGIN), ['mpool_cluster_plugin'])

    def test_loading(self):
        # mpoold looks for the plugin beside itself first: a copy of it in
        # a directory of our own decides which plugin it finds.
        with tempfile.TemporaryDirectory() as d:
            exe = os.path.join(d, 'mpoold')
            beside = os.path.join(d, 'mpool-cluster.so')
            shutil.copy(MPOOLD, exe)

            def run(args, status, says, what):
                p = subprocess.run([exe, '--config', '/dev/null', '--print-config'] + args,
                                   capture_output=True, text=True, timeout=30)
                out = p.stdout + p.stderr
                self.assertTrue(p.returncode == status and says in out,
                                '%s: exit %d, wanted %d and %r; said:\n%s'
                                % (what, p.returncode, status, says, out))

            shutil.copy(PLUGIN, beside)
            run(URL, 0, 'cluster-url = nats://127.0.0.1:4222', 'the real plugin')

            with open(beside, 'w') as f:
                f.write('not a shared object\n')
            run(URL, 2, 'cluster-url is set but the cluster plugin %s cannot be loaded: '
                % beside, 'a file that is no plugin')
            run([], 0, '#cluster-url', 'no cluster-url, a broken plugin beside')

            shutil.copy(BAD_ABI, beside)
            run(URL, 2, 'cannot be loaded: it is not from this build', 'a plugin of another ABI')


if __name__ == '__main__':
    MPOOLD, PLUGIN, BAD_ABI = sys.argv[1:4]
    unittest.main(argv=sys.argv[:1])
