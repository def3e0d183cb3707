"""Entry point of `make bench`: runs every section and prints one table."""

from __future__ import annotations

import sys

from tools.bench import chain, dhcpcodec, keygen, signin, store


def main() -> int:
    print("phoneprov benchmarks — peers measured in the same run; ratio = ours / peer (< 1: ours faster)\n")
    for section in (dhcpcodec.run, chain.run, store.run, signin.run, keygen.run):
        for line in section():
            print(line, flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
