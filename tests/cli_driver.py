"""Test driver: runs several `msrasr` command lines in this one process (one interpreter start, where each
costs seconds of imports) and prints, as JSON, each one's exit status and what it wrote to stdout and
stderr. Argument lists come as JSON on stdin. A command line that ends the process early (SystemExit,
as argparse does) is caught and recorded like a returned status."""
import contextlib
import io
import json
import sys

from msrasr_cli.main import main

if __name__ == '__main__':
    results = []
    for argv in json.load(sys.stdin):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
        results.append([code, out.getvalue(), err.getvalue()])
    json.dump(results, sys.stdout)
