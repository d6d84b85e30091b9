# shellcheck shell=bash disable=SC2154
# Shared by the launch scripts (sourced, not run): one-line errors, printing and running
# the same command line, and flag parsing. The sourcing script sets $me, $dry_run,
# $value_flags (" --flag --other ": the flags that take a value) and $switch_flags (the
# flags that take none). Written for bash 3.2 too, macOS's: no associative arrays.

die() {  # The one line a user needs, then exit 2.
  echo "$me: error: $*" >&2
  exit 2
}

quote() {  # One word for the shell: as is when safe, else single-quoted.
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

join_quoted() {  # A command line that runs exactly these words.
  local words=() word
  for word in "$@"; do words+=("$(quote "$word")"); done
  printf '%s' "${words[*]}"
}

run_line() {  # Prints a shell line, then runs that same line unless --dry-run.
  echo "+ $1"
  if ((!dry_run)); then eval "$1"; fi
}

run() { run_line "$(join_quoted "$@")"; }

set_flag() {  # set_flag --data-dir VALUE sets $data_dir; an unknown flag stops the script.
  [[ $value_flags == *" $1 "* ]] || die "unknown argument $1 (see --help)"
  local var="${1#--}"
  printf -v "${var//-/_}" '%s' "$2"
}

set_switch() {  # set_switch --dry-run sets $dry_run to 1.
  local var="${1#--}"
  printf -v "${var//-/_}" '%s' 1
}

parse_args() {  # The script's arguments: its flags, --help, and after -- $main_flags.
  while (($#)); do
    case $1 in
      -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
      --) shift; main_flags=("$@"); return ;;
      --*=*)
        [[ $switch_flags != *" ${1%%=*} "* ]] || die "${1%%=*} takes no value"
        set_flag "${1%%=*}" "${1#*=}" ;;
      *)
        if [[ $switch_flags == *" $1 "* ]]; then
          set_switch "$1"
        else
          set_flag "$1" "${2-}"
          (($# > 1)) || die "$1 needs a value"
          shift
        fi ;;
    esac
    shift
  done
}
