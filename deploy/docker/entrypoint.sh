#!/bin/sh
# The image's entrypoint: `docker run IMAGE train ...` runs `anima-lora train ...`.
# A Prefect Docker or Kubernetes worker starts a flow run with the command `prefect flow-run execute`,
# which keeps the image's entrypoint, so a command that is a program of its own is run as given.
set -e
case "$1" in
  prefect|python|python3|sh|bash|anima-lora) exec "$@" ;;
esac
exec anima-lora "$@"
