"""`make image`: the Dockerfile built with the container tool, on the base from Debian's archive
(tests/image/base.py) unless --base names another (python:3.11-slim: the registry's)."""

from __future__ import annotations

import argparse
import sys

from .base import base_image
from .build import build
from .tool import ContainerTool, ContainerToolError

DEBIAN = "debian"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.image")
    parser.add_argument("--tag", required=True, help="the image's name, e.g. ghcr.io/x/y:v1")
    parser.add_argument("--base", default=DEBIAN,
                        help=f"BASE_IMAGE: '{DEBIAN}' (made from Debian's archive, the default) "
                             "or an image to pull, e.g. python:3.11-slim")
    parser.add_argument("--tool", default="podman", help="podman (the default) or docker")
    args = parser.parse_args(argv)
    try:
        tool = ContainerTool(args.tool)
        base = base_image(tool) if args.base == DEBIAN else args.base
        build(tool, base, args.tag)
        size = tool.image_size(args.tag)
    except ContainerToolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.tag}: {size / 1e6:.0f} MB ({tool.name}, base {base})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
