#!/usr/bin/env bash
# Container entry point: one role per container.
#
#   api                        REST gateway           -> mmdlm serve
#   sampler                    sampler service        -> mmdlm serve-sampler
#   worker --queues Q[,Q...]   Celery worker          -> mmdlm worker --queues Q ...  (Q: encode|train|sample)
#   migrate                    schema upgrade, exit 0 -> mmdlm migrate
#   healthcheck [ROLE]         probe of this container's role (Docker HEALTHCHECK, Kubernetes exec probes)
#   mmdlm ARGS...              any other mmdlm command (token create, jobs, ...)
#   anything else              run as given (torchrun on a Kubeflow training node, a debugging shell)
#
# Secrets never live in the image. Every setting is an MMDLM_* variable; a variable NAME may instead be
# given as NAME_FILE=/path (Docker/Kubernetes secret files), whose content becomes NAME.
# The tests run this very script outside Docker (tests/deploy/test_entrypoints.py).
set -euo pipefail

die() {
    echo "mmdlm-entrypoint: $*" >&2
    exit 64
}

# MMDLM_FOO_FILE=/run/secrets/foo -> MMDLM_FOO=<content>; both at once is ambiguous and refused.
load_secret_files() {
    local var name file
    while IFS= read -r var; do
        name="${var%_FILE}"
        file="${!var}"
        [[ -n "$file" ]] || continue
        if [[ -n "${!name:-}" ]]; then
            die "both $name and $var are set; keep one"
        fi
        [[ -r "$file" ]] || die "$var points at $file, which is not a readable file"
        # Trailing newlines are dropped (editors add one); the rest of the file is the value.
        export "$name=$(<"$file")"
        unset "$var"
    done < <(compgen -e | grep -E '^MMDLM_[A-Z0-9_]+_FILE$' || true)
}

# The role (and worker node name) for `healthcheck` without arguments, which a Docker HEALTHCHECK runs in
# a separate process that cannot see this script's arguments.
STATE_FILE="${ENTRYPOINT_STATE_FILE:-/tmp/mmdlm-entrypoint.state}"

remember() {
    # Best effort: a read-only filesystem only costs the argument-less healthcheck.
    printf '%s\n' "$@" >"$STATE_FILE" 2>/dev/null || echo "mmdlm-entrypoint: cannot write $STATE_FILE" >&2
}

worker_has_queues() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            --queues | --queues=*) return 0 ;;
        esac
    done
    return 1
}

role="${1:-api}"
[[ $# -gt 0 ]] && shift

case "$role" in
    api)
        load_secret_files
        remember api
        exec mmdlm serve "$@"
        ;;
    sampler)
        load_secret_files
        remember sampler
        exec mmdlm serve-sampler "$@"
        ;;
    worker)
        load_secret_files
        worker_has_queues "$@" || die "worker needs --queues encode|train|sample (comma-separated)"
        # A fixed Celery node name so the healthcheck pings this worker and no other. exec keeps this PID.
        node="${WORKER_NODE_NAME:-mmdlm-$$@${HOSTNAME:-$(hostname)}}"
        remember worker "$node"
        exec mmdlm worker --hostname "$node" "$@"
        ;;
    migrate)
        load_secret_files
        exec mmdlm migrate "$@"
        ;;
    healthcheck)
        # No role given: the role this container started with. A worker is pinged by its node name.
        load_secret_files
        if [[ $# -eq 0 ]]; then
            [[ -r "$STATE_FILE" ]] || die "healthcheck: no role given and no $STATE_FILE (role not started yet?)"
            mapfile -t state <"$STATE_FILE"
            set -- "${state[0]}"
        fi
        if [[ "$1" == worker && " $* " != *" --node"* && -r "$STATE_FILE" ]]; then
            mapfile -t state <"$STATE_FILE"
            if [[ "${state[0]}" == worker ]]; then
                set -- "$@" --node "${state[1]}"
            fi
        fi
        exec python -m services.deploy.healthcheck "$@"
        ;;
    mmdlm)
        load_secret_files
        exec mmdlm "$@"
        ;;
    -h | --help | help)
        sed -n '2,14p' "$0"
        ;;
    *)
        # torchrun on a Kubeflow training node, a shell for debugging, ...
        load_secret_files
        exec "$role" "$@"
        ;;
esac
