# shellcheck shell=bash
# Shared body of the twelve ModelZoo scripts test/train_{full,performance}_{1p,8p}[_bs32|_bs256].sh.
# A script sets MODE (full | performance), RANK_SIZE (1 | 8), BATCH_PER_DEVICE and RECIPE (a
# file in configs/), sources this file and calls `modelzoo_main "$@"`. Works from the repo
# root, from test/ or from anywhere: the repository is found from this file's location, and
# the current folder is left alone (relative paths in the arguments mean what they mean to
# the caller). The Python side is `python -m ignite_rn50.modelzoo` (resolve, report).
#
# Recipes, as the package ran them (its configs/resnet/resnet50_8xb*_cifar100*.py):
#   batch 16 per device:  configs/resnet50_cifar100.yaml, SGD lr 0.1, x0.2 at 60/120/160
#   batch 32 per device:  configs/resnet50_cifar100_cos.yaml, lr 0.2, cosine to 0 per epoch
#   batch 256 per device: configs/resnet50_cifar100_bs256_mix.yaml (1p, global 256) and
#                         configs/resnet50_cifar100_8p_bs2048_mix.yaml (8p, global 2048):
#                         mixup + cutmix, label smoothing 0.1, lr 1.6, cosine to 0 after a
#                         linear warm-up over 20 epochs' iterations
#   all: apex O2 with a static loss scale of 1024 where apex imports on an NPU, else native
#   AMP with the same static scale (cpu: fp32), from the config's amp_backend: auto.
#
# Command: python -m ignite_rn50.run --config configs/$RECIPE
#            --batch-size RANK_SIZE*BATCH_PER_DEVICE (GLOBAL) --nproc RANK_SIZE
#            [--gpu-id $ASCEND_DEVICE_ID]                       (1p scripts)
#            [--epochs 2]                                       (performance scripts)
#            --output-dir $OUTPUT_ROOT/$ASCEND_DEVICE_ID/train_<mode>_<n>p_bs<b>
#            --data DIR                                         (see "Data" below)
#            <every other argument of the script>               (last, so they win)
# e.g. `bash test/train_full_8p.sh --device cpu --dataset synthetic --depth 18 --epochs 1
# --nproc 2` is a CPU smoke run; with --nproc 2 an 8p script's global batch stays 128.
#
# Arguments
#   --data_path=DIR | --data_path DIR  the cifar-100-python folder or its parent: the
#                                      trainer's --data DIR. A DIR that does not exist is
#                                      one `error:` line and exit status 2.
#   anything else                      passed through to the trainer unchanged.
# Data: without --data_path, the ModelZoo package downloaded CIFAR-100 by itself; so do these scripts:
#   they pass `--data <repo>/data --download` (fetched once, reused afterwards) unless the
#   arguments carry their own --data. `--dataset synthetic` needs no data (and ignores both).
# Environment
#   ASCEND_DEVICE_ID  card of 1p runs (--gpu-id) and name of the output folder (default 0)
#   OUTPUT_ROOT       folder that holds <ASCEND_DEVICE_ID>/ (default <repo>/test/output)
#   PYTHON            interpreter that runs the trainer (default python3)
#   test/env_npu.sh is sourced first: it sets the Ascend variables when CANN is installed.
# Output in $OUTPUT_ROOT/$ASCEND_DEVICE_ID/, the package's files, every value read from the
# run's summary.json and train_loss.csv (not grepped from the log):
#   train_<id>.log        the trainer's whole stdout+stderr (also shown on the console)
#   train_<mode>_<n>p_bs<b>/  the trainer's --output-dir (checkpoints, summary.json,
#                         config.yaml, train.log, train_loss.csv, curves.png); an earlier
#                         run's folder is renamed <folder>.previous-<time> before a new run
#                         unless the arguments hold --resume (a folder a run still holds is
#                         refused). A --output-dir argument replaces it.
#   <CaseName>.log        `key = value` lines: Network, RankSize, BatchSize, DeviceType
#                         (uname -m), CaseName, ActualFPS, TrainingTime (ms per global step),
#                         TrainAccuracy (the BEST validation top-1 of the run, %, as the
#                         package takes the maximum over its validation lines), ActualLoss
#                         (last epoch's mean training loss), E2ETrainingTime (s).
#                         CaseName = <Network>_bs<global batch>_<processes>p_acc, for
#                         performance scripts too (the package's name).
#   train_<CaseName>_loss.txt  one training loss per logged iteration (--print-freq), in order.
#   train_<CaseName>_perf_report.log  (full runs) `key : value` lines:
#       train_training_time             sum of the epochs' training wall time (s), evaluation
#                                       excluded
#       train_eval_time                 sum of the epochs' evaluation time (s)
#       total_time                      the trainer's end-to-end time (s; this session's)
#       training maximum images/sec     the best epoch's steady-state FPS (the package: batch /
#                                       its fastest logged iteration)
#       training average images/sec     images trained / train_training_time
#       end to end average images/sec   images trained / total_time
# Exit status: the trainer's. A failed run writes none of these files, and those of an
# earlier run with the same CaseName are removed before training starts.

MODELZOO_NETWORK="Resnet50_cifar_for_PyTorch"
MODELZOO_TEST_DIR="$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
MODELZOO_REPO="$(dirname -- "$MODELZOO_TEST_DIR")"

_modelzoo_error() {
    echo "error: $*" >&2
}

# The Python side (resolving the trainer's arguments, writing the package's files) is
# `python -m ignite_rn50.modelzoo`; see its docstring.
_modelzoo_py() {
    PYTHONPATH="$MODELZOO_REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m ignite_rn50.modelzoo "$@"
}

modelzoo_main() {
    local batch ranks data_path="" have_data_path=0 user_has_data=0 user_resume=0 help=0
    local -a user_args=() args=()
    case "${MODE:-}" in
        full|performance) ;;
        *) _modelzoo_error "MODE must be full or performance, got '${MODE:-}'"; return 2 ;;
    esac
    if [ ! -f "$MODELZOO_REPO/configs/${RECIPE:-}" ]; then
        _modelzoo_error "RECIPE must name a file in configs/, got '${RECIPE:-}'"
        return 2
    fi
    ranks="${RANK_SIZE:?RANK_SIZE is not set}"
    batch=$((RANK_SIZE * ${BATCH_PER_DEVICE:?BATCH_PER_DEVICE is not set}))

    while [ $# -gt 0 ]; do
        case "$1" in
            --data_path=*) data_path="${1#--data_path=}"; have_data_path=1 ;;
            --data_path)
                if [ $# -lt 2 ]; then
                    _modelzoo_error "--data_path needs a folder: --data_path=DIR"; return 2
                fi
                data_path="$2"; have_data_path=1; shift ;;
            *)
                case "$1" in
                    --data|--data=*) user_has_data=1 ;;
                    --resume|--resume=*) user_resume=1 ;;
                    -h|--help) help=1 ;;
                esac
                user_args+=("$1") ;;
        esac
        shift
    done

    if [ "$help" -eq 1 ]; then
        echo "usage: bash $0 [--data_path=DIR] [trainer flags]: runs the trainer below with the" \
            "script's flags (see test/common.sh), then yours"
        PYTHONPATH="$MODELZOO_REPO${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" \
            -m ignite_rn50.run --help
        return
    fi
    if [ "$have_data_path" -eq 1 ] && [ -z "$data_path" ]; then
        _modelzoo_error "--data_path needs a folder: --data_path=DIR"
        return 2
    fi
    ASCEND_DEVICE_ID="${ASCEND_DEVICE_ID:-0}"
    if ! [[ "$ASCEND_DEVICE_ID" =~ ^[0-9]+$ ]]; then
        _modelzoo_error "ASCEND_DEVICE_ID must be a card number (0, 1, ...), got '$ASCEND_DEVICE_ID'"
        return 2
    fi
    PYTHON="${PYTHON:-python3}"
    if [ -f "$MODELZOO_TEST_DIR/env_npu.sh" ]; then
        # shellcheck source=env_npu.sh
        source "$MODELZOO_TEST_DIR/env_npu.sh"
    fi

    local out_root="${OUTPUT_ROOT:-$MODELZOO_TEST_DIR/output}"
    local log_dir="$out_root/$ASCEND_DEVICE_ID"
    mkdir -p "$log_dir" || { _modelzoo_error "cannot create $log_dir"; return 2; }
    log_dir="$(CDPATH='' cd -- "$log_dir" && pwd -P)"
    local run_dir="$log_dir/train_${MODE}_${RANK_SIZE}p_bs${BATCH_PER_DEVICE}"
    local train_log="$log_dir/train_${ASCEND_DEVICE_ID}.log"

    args=(--config "$MODELZOO_REPO/configs/$RECIPE" --batch-size "$batch" --nproc "$RANK_SIZE")
    if [ "$RANK_SIZE" -eq 1 ]; then args+=(--gpu-id "$ASCEND_DEVICE_ID"); fi
    if [ "$MODE" = performance ]; then args+=(--epochs 2); fi
    args+=(--output-dir "$run_dir")
    if [ "$have_data_path" -eq 1 ]; then
        args+=(--data "$data_path")
    elif [ "$user_has_data" -eq 0 ]; then
        args+=(--data "$MODELZOO_REPO/data" --download)
    fi
    args+=("${user_args[@]}")

    # What the trainer will really use (the arguments may override batch, --nproc, output).
    local resolved eff_batch eff_ranks eff_out
    resolved="$(_modelzoo_py resolve "${args[@]}")"
    { read -r eff_batch; read -r eff_ranks; read -r eff_out; } <<<"$resolved"
    if [ -f "$eff_out/.ignite_rn50.lock" ] && command -v flock >/dev/null \
        && ! flock -n "$eff_out/.ignite_rn50.lock" true; then
        _modelzoo_error "--output-dir $eff_out is in use by another run" \
            "($(cat "$eff_out/.ignite_rn50.lock" 2>/dev/null)); wait for it to end or pass" \
            "another --output-dir"
        return 2
    fi
    local case_name
    for case_name in "${MODELZOO_NETWORK}_bs${batch}_${ranks}p_acc" \
                     "${MODELZOO_NETWORK}_bs${eff_batch:-$batch}_${eff_ranks:-$ranks}p_acc"; do
        rm -f "$log_dir/$case_name.log" "$log_dir/train_${case_name}_loss.txt" \
              "$log_dir/train_${case_name}_perf_report.log"
    done

    if [ "$have_data_path" -eq 1 ] && [ ! -d "$data_path" ]; then
        _modelzoo_error "--data_path $data_path does not exist or is not a folder; pass the" \
            "folder that holds cifar-100-python/ (or that folder itself)"
        return 2
    fi
    if [ "$user_resume" -eq 0 ] && [ "$eff_out" = "$run_dir" ] && [ -d "$run_dir" ]; then
        # our own folder: a fresh run (the trainer refuses old checkpoints); the earlier run
        # is kept beside it, not deleted (resume it with --resume auto --output-dir <it>)
        mv "$run_dir" "$run_dir.previous-$(date +%Y%m%d-%H%M%S)-$$"
    fi

    local stamp="$log_dir/.${MODE}_${RANK_SIZE}p_bs${BATCH_PER_DEVICE}.started"
    : >"$stamp"
    local status
    {
        printf 'ModelZoo %s %sp bs%s: %s -m ignite_rn50.run' "$MODE" "$RANK_SIZE" "$batch" "$PYTHON"
        printf ' %q' "${args[@]}"
        printf '\n'
        PYTHONPATH="$MODELZOO_REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m ignite_rn50.run \
            "${args[@]}" 2>&1
    } | tee "$train_log"
    status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
        rm -f "$stamp"
        _modelzoo_error "training failed (exit status $status); no CaseName log written;" \
            "full log: $train_log"
        return "$status"
    fi
    _modelzoo_py report "$eff_out/summary.json" "$stamp" "$log_dir" "$MODE"
    status=$?
    rm -f "$stamp"
    return "$status"
}
