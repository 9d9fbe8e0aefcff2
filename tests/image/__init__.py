"""The container image, built as users build it and run as the Deployment runs it: a base made
from Debian's archive alone where no registry can be reached (base.py), the project's Dockerfile
on it (build.py), with podman (tool.py). `python -m tests.image` is `make image`."""
