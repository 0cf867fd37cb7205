package jobwire

// The in-shell job channel, version 1 (ShellProtocolVersion)
//
// A job declared by a shell function costs no process of its own: the
// function (ShellLibrary, which the worker writes for every run as
// $REFCI_SH) tells refci about the job by writing lines to a FIFO,
// $REFCI_JOBS/ctl, and runs the command itself with its output going to
// the file $REFCI_JOBS/NAME.out, which the worker reads as it grows. A
// shell writes such a line with its printf builtin and a redirection,
// with no process. Each line is one event, at most ShellMaxLine bytes
// (shorter than PIPE_BUF, so that lines written at once by parallel
// subshells do not mix), words separated by one space:
//
//	refci/1 start NAME [NEED,NEED...]
//	    the job starts now: its command runs, its output goes to
//	    $REFCI_JOBS/NAME.out. NEEDs are the jobs it needed (all of
//	    which succeeded, as the shell saw it), recorded with it.
//	refci/1 end NAME CODE
//	    the job's command exited with status CODE (0..255, as the shell
//	    saw it: $?).
//	refci/1 skip NAME NEED,NEED...
//	    the job did not run: a need did not succeed.
//
// There is no reply: the shell decides on its needs itself, from the jobs
// it ran (see ShellLibrary). The worker validates every line as it does a
// socket message and refuses, without stopping the run, a line that is
// not one of these, a name that is not a job name, a start of a job that
// exists, an end of a job that no start on this channel began or that
// has ended; a line cut short at the end is dropped.

import (
	"fmt"
	"strconv"
	"strings"
)

// ShellProtocolVersion is the version of the in-shell job channel
// described above; its lines start "refci/" and the version.
const ShellProtocolVersion = 1

// ShellMaxLine is the longest control line of the in-shell channel,
// newline included; ShellLibrary refuses a job whose line would be
// longer.
const ShellMaxLine = 4000

// shellLinePrefix starts every control line of this version.
var shellLinePrefix = "refci/" + strconv.Itoa(ShellProtocolVersion) + " "

// The events of the in-shell channel.
const (
	ShellStart = "start"
	ShellEnd   = "end"
	ShellSkip  = "skip"
)

// ShellEvent is one control line of the in-shell channel, parsed but not
// validated (names and needs are as written).
type ShellEvent struct {
	Op    string   // ShellStart, ShellEnd or ShellSkip
	Name  string   // the job
	Needs []string // start, skip
	Code  int      // end: 0..255
}

// ParseShellLine parses one control line (without its newline).
func ParseShellLine(line string) (ShellEvent, error) {
	rest, ok := strings.CutPrefix(line, shellLinePrefix)
	if !ok {
		if v, _, found := strings.Cut(line, " "); found && strings.HasPrefix(v, "refci/") {
			return ShellEvent{}, fmt.Errorf("a line of protocol %s; this refci speaks refci/%d (is $REFCI_SH of another refci?)", v, ShellProtocolVersion)
		}
		return ShellEvent{}, fmt.Errorf("not a control line (want %q and an event)", strings.TrimSpace(shellLinePrefix))
	}
	f := strings.Split(rest, " ")
	var ev ShellEvent
	ev.Op = f[0]
	switch {
	case ev.Op == ShellStart && (len(f) == 2 || len(f) == 3):
	case ev.Op == ShellSkip && len(f) == 3:
	case ev.Op == ShellEnd && len(f) == 3:
		code, err := strconv.Atoi(f[2])
		if err != nil || code < 0 || code > 255 || f[2] != strconv.Itoa(code) {
			return ShellEvent{}, fmt.Errorf("%s: exit status %q is not a number in 0..255", ev.Op, f[2])
		}
		ev.Code = code
	case ev.Op == ShellStart || ev.Op == ShellSkip || ev.Op == ShellEnd:
		return ShellEvent{}, fmt.Errorf("%s: wrong number of words (%d)", ev.Op, len(f))
	default:
		return ShellEvent{}, fmt.Errorf("unknown event %q", ev.Op)
	}
	ev.Name = f[1]
	if ev.Op != ShellEnd && len(f) == 3 {
		if f[2] == "" {
			if ev.Op == ShellSkip {
				return ShellEvent{}, fmt.Errorf("%s: no needs", ev.Op)
			}
		} else {
			ev.Needs = strings.Split(f[2], ",")
		}
	}
	return ev, nil
}

// ShellLibrary is the POSIX shell library a pipeline sources, . "$REFCI_SH",
// for in-shell jobs: it defines refci_job. It works in dash and bash, under
// set -e and set -u. Its hot path uses builtins only (printf, test,
// case, redirections): a job costs the fork and exec of its command and a
// few small writes. It reads $REFCI_JOBS when sourced.
const ShellLibrary = `# refci in-shell jobs, written by refci for this run (protocol refci/1).
#   . "$REFCI_SH"
#   refci_job NAME [--needs A,B] [--] CMD [ARGS...]
# runs CMD as the shell would (stdin /dev/null, REFCI_JOB=NAME), its stdout
# and stderr going to the job's log (and, prefixed [NAME], to the run's
# log), and returns its exit status. A job whose needs (jobs run earlier by
# refci_job in this same shell) did not all succeed is skipped: status 1.
# Usage errors: status 2. For jobs in parallel that wait for each other,
# use refci job.

_refci_dir=${REFCI_JOBS:?refci_job: REFCI_JOBS is not set: source $REFCI_SH inside a refci pipeline}
_refci_ctl=$_refci_dir/ctl
_refci_done=' '
_refci_an=abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789

_refci_err() {
	printf 'refci_job: %s\n' "$1" >&2
}

# _refci_name WHAT NAME: succeeds if NAME is a valid job name.
_refci_name() {
	case $2 in
	[$_refci_an]*) case $2 in *[!$_refci_an._-]* | *..*) ;; *) [ ${#2} -le 100 ] && return 0 ;; esac ;;
	esac
	_refci_err "$1 \"$2\" is not valid: use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"
	return 1
}

# Under set -x only the job's command is traced.
refci_job() {
	case $- in
	*x*)
		{ set +x; } 2>/dev/null
		local _refci_xt=1 _refci_st=0
		_refci_job "$@" || _refci_st=$?
		set -x
		return $_refci_st ;;
	esac
	_refci_job "$@"
}

_refci_job() {
	local n= needs= hasneeds= a x rest list= failed= rc
	while [ $# -gt 0 ]; do
		a=$1
		case $a in
		--) shift; break ;;
		-h | -help | --help)
			_refci_err 'usage: refci_job NAME [--needs A,B] [--] CMD [ARGS...]'
			return 2 ;;
		--needs | -needs)
			if [ $# -lt 2 ]; then
				_refci_err "$a needs a value: a comma-separated list of job names"
				return 2
			fi
			needs=$needs,$2; hasneeds=1; shift 2; continue ;;
		--needs=* | -needs=*) needs=$needs,${a#*=}; hasneeds=1 ;;
		-?*) _refci_err "unknown option \"$a\""; return 2 ;;
		*)
			[ -z "$n" ] || break
			n=$a ;;
		esac
		shift
	done
	if [ -z "$n" ]; then
		_refci_err 'missing job NAME (usage: refci_job NAME [--needs A,B] [--] CMD [ARGS...])'
		return 2
	fi
	_refci_name 'job name' "$n" || return 2
	if [ $# -eq 0 ]; then
		_refci_err "$n: missing CMD (usage: refci_job NAME [--needs A,B] [--] CMD [ARGS...])"
		return 2
	fi
	case $_refci_done in *" $n:"*)
		_refci_err "job \"$n\" was already started in this run; job names must be unique"
		return 2 ;;
	esac
	rest=$needs,
	while [ -n "$rest" ]; do
		x=${rest%%,*}
		rest=${rest#*,}
		while :; do case $x in ' '*) x=${x# } ;; *' ') x=${x% } ;; *) break ;; esac; done
		[ -n "$x" ] || continue
		_refci_name '--needs: job name' "$x" || return 2
		if [ "$x" = "$n" ]; then
			_refci_err "job \"$n\" cannot need itself"
			return 2
		fi
		case ,$list, in *,$x,*) continue ;; esac
		list=${list:+$list,}$x
		case $_refci_done in
		*" $x:success "*) ;;
		*" $x:"*) [ -n "$failed" ] || failed=$x ;;
		*)
			_refci_err "$n: --needs $x, which this shell has not run: refci_job's needs are jobs run before it by refci_job in the same shell (not in a background subshell); use refci job --needs to wait for jobs run in parallel or by refci job"
			return 2 ;;
		esac
	done
	if [ -n "$hasneeds" ] && [ -z "$list" ]; then
		_refci_err "--needs names no job; give a comma-separated list of job names"
		return 2
	fi
	if [ $(( ${#n} + ${#list} + 32 )) -gt 4000 ]; then
		_refci_err "$n: too many needs for one job"
		return 2
	fi
	if [ -n "$failed" ]; then
		printf 'refci/1 skip %s %s\n' "$n" "$list" >>"$_refci_ctl" || {
			_refci_err "$n: cannot reach refci through $_refci_ctl"
			return 2
		}
		_refci_done="$_refci_done$n:skipped "
		x=${_refci_done#*" $failed:"}
		case ${x%%' '*} in
		failure) x=failed ;;
		skipped) x='was skipped' ;;
		*) x="ended ${x%%' '*}" ;;
		esac
		printf 'refci_job: %s skipped: needs %s, which %s\n' "$n" "$failed" "$x" >&2
		return 1
	fi
	printf 'refci/1 start %s %s\n' "$n" "$list" >>"$_refci_ctl" || {
		_refci_err "$n: cannot reach refci through $_refci_ctl"
		return 2
	}
	if [ -n "${_refci_xt-}" ]; then
		set -x
		REFCI_JOB=$n "$@" </dev/null >"$_refci_dir/$n.out" 2>&1 && rc=0 || rc=$?
		{ set +x; } 2>/dev/null
	else
		REFCI_JOB=$n "$@" </dev/null >"$_refci_dir/$n.out" 2>&1 && rc=0 || rc=$?
	fi
	printf 'refci/1 end %s %s\n' "$n" "$rc" >>"$_refci_ctl" || :
	if [ "$rc" -eq 0 ]; then
		_refci_done="$_refci_done$n:success "
	else
		_refci_done="$_refci_done$n:failure "
	fi
	return "$rc"
}
`
