"""A command hook for tests: writes the argv it was given (as JSON) to the file after `--out`, or to
`--log` (appending one line) when there is no artifact; exits with `--exit N` after writing."""

import json
import sys

args = sys.argv[1:]
line = json.dumps(args)
if "--out" in args:
    with open(args[args.index("--out") + 1], "w", encoding="utf-8") as f:
        f.write(line)
if "--log" in args:
    with open(args[args.index("--log") + 1], "a", encoding="utf-8") as f:
        f.write(line + "\n")
if "--exit" in args:
    print("the dump failed: disk full (from the test hook)", file=sys.stderr)
    sys.exit(int(args[args.index("--exit") + 1]))
