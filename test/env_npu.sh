# shellcheck shell=bash
# Ascend (CANN) environment for the ModelZoo scripts; sourced by test/common.sh, or by hand:
# `source test/env_npu.sh`. Where CANN is installed it sources CANN's set_env.sh and sets the
# usual Ascend variables (a value already in the environment is kept). Where CANN is absent
# it does nothing: no output, no variable set, status 0. It never exits, and the caller's
# `set -e`/`set -u` cannot make CANN's own scripts kill the caller.
#
# CANN is looked for in $CANN_INSTALL_PATH, else in the Install_Path of
# /etc/Ascend/ascend_cann_install.info, else in /usr/local/Ascend: ascend-toolkit/set_env.sh
# (toolkit) or nnae/set_env.sh (runtime only), plus nnal/atb/set_env.sh when present.

_env_npu_flags="$-"   # the caller's set -e / set -u, restored at the end
set +eu
_env_npu_root="${CANN_INSTALL_PATH:-}"
if [ -z "$_env_npu_root" ] && [ -r /etc/Ascend/ascend_cann_install.info ]; then
    _env_npu_root="$(sed -n 's/^Install_Path=//p' /etc/Ascend/ascend_cann_install.info \
        2>/dev/null | head -n 1)"
fi
_env_npu_root="${_env_npu_root:-/usr/local/Ascend}"

_env_npu_found=0
for _env_npu_file in "$_env_npu_root/ascend-toolkit/set_env.sh" "$_env_npu_root/nnae/set_env.sh"; do
    if [ -f "$_env_npu_file" ]; then
        # shellcheck disable=SC1090
        source "$_env_npu_file"
        _env_npu_found=1
        break
    fi
done

if [ "$_env_npu_found" -eq 1 ]; then
    if [ -f "$_env_npu_root/nnal/atb/set_env.sh" ]; then
        # shellcheck disable=SC1091
        source "$_env_npu_root/nnal/atb/set_env.sh"
    fi
    export ASCEND_SLOG_PRINT_TO_STDOUT="${ASCEND_SLOG_PRINT_TO_STDOUT:-0}"  # device logs to files
    export ASCEND_GLOBAL_LOG_LEVEL="${ASCEND_GLOBAL_LOG_LEVEL:-3}"          # 3 = error
    export ASCEND_GLOBAL_EVENT_ENABLE="${ASCEND_GLOBAL_EVENT_ENABLE:-0}"
    export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-1}"       # asynchronous op dispatch
    export COMBINED_ENABLE="${COMBINED_ENABLE:-1}"           # fuse non-contiguous copies
    export HCCL_WHITELIST_DISABLE="${HCCL_WHITELIST_DISABLE:-1}"
    export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1200}"  # s to set up HCCL links
    export HCCL_EXEC_TIMEOUT="${HCCL_EXEC_TIMEOUT:-1800}"
fi

case "$_env_npu_flags" in *u*) set -u ;; esac
case "$_env_npu_flags" in *e*) set -e ;; esac
unset _env_npu_flags _env_npu_root _env_npu_found _env_npu_file
:
