# Sourced by the project's batch scripts (launcher/slurm/pretrain.sbatch, the sweep's run.sbatch
# through it, data_prep/slurm/clean.sbatch's tasks). Two functions:
#
#   run_step CMD...   runs CMD (an srun) and waits for it to end. A SIGTERM to the batch shell
#                     (sbatch --signal=B:TERM@SECONDS before the time limit, a preemption,
#                     scancel --signal=TERM --batch) is passed on to the tasks of the job's steps
#                     (scancel --signal=TERM), never to srun itself, which would kill the step:
#                     the step lives on until every task has saved and exited. A second SIGTERM
#                     is not passed on: the tasks have one already.
#   requeue_unless_done WHAT DONE BEFORE AFTER LOG
#                     after the step: DONE=1 when the work is finished (never requeued); else the
#                     job requeues itself (scontrol requeue). BEFORE/AFTER: what the work had saved
#                     when the step started and ended (a checkpoint's name, a count of finished
#                     pieces); LOG: a file that keeps one line per attempt. After
#                     LLMTRAIN_REQUEUE_LIMIT (default 3) attempts in a row that saved nothing new
#                     (a real error, not a time limit), the job stops with one line naming the limit.

LLMTRAIN_REQUEUE_LIMIT=${LLMTRAIN_REQUEUE_LIMIT:-3}
_terms_seen=0
_term_passed=0

# Only the first SIGTERM that reaches the tasks counts (they save once and exit); a second one
# (a preemption on top of the time-limit signal) could reach a rank that has saved and is exiting,
# past its handler, and end it by signal: srun then force-terminates the step. So it is passed on
# once, again only if passing it on failed.
_pass_term_on() {
    _terms_seen=$((_terms_seen + 1))
    if [ "$_term_passed" = 1 ]; then
        echo "$(date '+%F %T') job ${SLURM_JOB_ID}: SIGTERM again; the tasks have it already" >&2
        return
    fi
    echo "$(date '+%F %T') job ${SLURM_JOB_ID}: SIGTERM; passing it to the tasks, which save and exit" >&2
    scancel --signal=TERM "$SLURM_JOB_ID" && _term_passed=1   # every step's tasks, not this shell
}

run_step() {
    trap _pass_term_on TERM
    "$@" &
    local pid=$! rc seen
    while :; do
        seen=$_terms_seen
        wait "$pid"
        rc=$?
        # a wait cut short by the SIGTERM handler: the step is still running, wait on
        if [ "$rc" -gt 128 ] && [ "$seen" != "$_terms_seen" ]; then continue; fi
        break
    done
    # the step is over: nothing left to pass a SIGTERM on to, and a handler run while bash parses
    # the requeue decision's $(...) breaks the parse ("unexpected EOF while looking for matching )")
    trap '' TERM
    return "$rc"
}

requeue_unless_done() {
    local what=$1 done=$2 before=$3 after=$4 log=$5 job="${SLURM_JOB_ID}" stalled when attempt state outcome
    when=$(date '+%F %T')
    mkdir -p "$(dirname "$log")"
    attempt="${when} job ${job} (restart ${SLURM_RESTART_COUNT:-0}): ${before} -> ${after}"
    if [ "$done" = 1 ]; then
        echo "${attempt}: finished" >> "$log"
        echo "$what finished: job $job is not requeued" >&2
        return 0
    fi
    if [ "$before" = "$after" ]; then
        # attempts of this job in a row that saved nothing new: those at the end of the log, and this one
        stalled=$(awk -v me="job $job " 'index($0, me) && /: nothing new saved/ {n++; next} {n=0} END {print n + 1}' \
            "$log" 2>/dev/null || echo 1)
        outcome="nothing new saved (${stalled} in a row)"
        if [ "$stalled" -gt "$LLMTRAIN_REQUEUE_LIMIT" ]; then
            echo "${attempt}: ${outcome}: stopped at LLMTRAIN_REQUEUE_LIMIT=$LLMTRAIN_REQUEUE_LIMIT" >> "$log"
            echo "error: $what saved nothing new in $stalled attempts in a row (LLMTRAIN_REQUEUE_LIMIT=$LLMTRAIN_REQUEUE_LIMIT): job $job is not requeued; the errors are above and in $log" >&2
            return 1
        fi
    else
        outcome="requeued"
    fi
    # a job Slurm is already ending (scancel, or past its time limit) stays ended; one that Slurm
    # preempts with requeue comes back on its own
    state=$(scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1)
    if [ "$state" != "JobState=RUNNING" ]; then
        echo "${attempt}: not requeued (${state:-job unknown}: cancelled, preempted or past its time limit)" >> "$log"
        echo "$what stopped before its end (saved: $after); job $job is ending (${state:-unknown}: cancelled, preempted or past its time limit), so it is not requeued here" >&2
        return 0
    fi
    echo "${attempt}: ${outcome}" >> "$log"
    echo "$what stopped before its end (saved: $after): requeueing job $job" >&2
    scontrol requeue "$job" || { echo "job $job was not requeued (cancelled?); submit it again to go on" >&2; return 1; }
    return 0
}
