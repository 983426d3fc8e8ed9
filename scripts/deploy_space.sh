#!/usr/bin/env bash
# Deploy one Space from the monorepo to its Hugging Face Space repository.
#
# Stages spaces/<space>/ into a temp folder with the vendored shared/ package (and optionally a
# model folder), checks it with scripts/check_space.py, then commits it on top of the remote's
# history and pushes through git + git-lfs. See --help.
#
# History: Hub Spaces keep their own history (the Hub's UI commits there too), so the deploy
# clones the remote shallowly, replaces the whole tree and pushes one ordinary commit on top.
# It never force-pushes: if the remote moved meanwhile the push is rejected and a rerun is safe.
#
# Secrets: HF_TOKEN reaches git only through a credential helper that reads it from the
# environment when git asks for a password, so its value is never in any process's argv (ps),
# never in a URL, never in git's config files and never printed. Do not add `set -x` here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly CHECKER="$ROOT/scripts/check_space.py"
readonly BRANCH="main"
readonly FALLBACK_NAME="Space deploy"
readonly FALLBACK_EMAIL="deploy@localhost"

# Exit statuses.
readonly EXIT_FAILED=1 EXIT_USAGE=2 EXIT_CHECKS=3

usage() {
  cat <<'EOF'
Usage: scripts/deploy_space.sh <space> [options]

Stage spaces/<space>/ with the vendored shared/ package, check it, commit it on top of the
Space repository's history and push it (git + git-lfs). Never force-pushes.

Options:
  --dry-run             Stage and check only: print the staged folder and the files that
                        would be pushed (lfs|git, bytes, path); push nothing. The staged
                        folder is kept for you to inspect.
  --remote URL          Push here instead of https://huggingface.co/spaces/$HF_OWNER/<space>.
                        A local path or file:// URL works too (git-lfs stores the weights in
                        the repository's lfs/ folder). Never put a token in the URL.
  --include-model DIR   Ship a local model folder as <staged>/model/ (weights go through
                        LFS); point the Space's model env var at ./model.
  --message MSG         Commit message (default: "Deploy <space> from monorepo <commit>").
  --spaces-dir DIR      Take the Space from DIR/<space> instead of the monorepo's spaces/.
  -h, --help            Show this help.

Environment:
  HF_OWNER   The Hub user or organisation that owns the Space (unless --remote).
  HF_TOKEN   A Hub token with write access. Read by a git credential helper when git asks;
             never passed on a command line, never printed.
  PYTHON     Interpreter for scripts/check_space.py (default: .venv/bin/python, else python3).

The Space repository must exist (create it once: hf repos create OWNER/NAME --type space
--sdk gradio). Requires git and git-lfs.

Exit status: 0 deployed (or nothing changed, or dry run passed), 1 git/push failure,
2 usage error, 3 the staged Space failed its checks.
EOF
}

log() { printf 'deploy_space: %s\n' "$*" >&2; }
die() {
  local status=$1
  shift
  printf 'deploy_space: error: %s\n' "$*" >&2
  exit "$status"
}

# Copy a folder's contents (following symlinks, e.g. a Hub cache snapshot) without caches.
copy_tree() {
  local src=$1 dst=$2
  shift 2
  local excludes=(
    --exclude=./.git --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache
    --exclude=.hypothesis --exclude='*.pyc' --exclude=.DS_Store
  )
  local pattern
  for pattern in "$@"; do
    excludes+=("--exclude=$pattern")
  done
  mkdir -p "$dst"
  tar -C "$src" -ch "${excludes[@]}" . | tar -C "$dst" -x
}

space="" dry_run=0 remote="" model_dir="" message="" spaces_dir="$ROOT/spaces"
while (($#)); do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --dry-run) dry_run=1 ;;
    --remote | --include-model | --message | --spaces-dir)
      (($# >= 2)) || die "$EXIT_USAGE" "$1 needs a value (see --help)"
      case $1 in
        --remote) remote=$2 ;;
        --include-model) model_dir=$2 ;;
        --message) message=$2 ;;
        --spaces-dir) spaces_dir=$2 ;;
      esac
      shift
      ;;
    -*) die "$EXIT_USAGE" "unknown option $1 (see --help)" ;;
    *)
      [[ -z $space ]] || die "$EXIT_USAGE" "one Space at a time (got '$space' and '$1')"
      space=$1
      ;;
  esac
  shift
done

[[ -n $space ]] || {
  usage >&2
  exit "$EXIT_USAGE"
}
space_dir="$spaces_dir/$space"
if [[ ! -d $space_dir ]]; then
  available=""
  for folder in "$spaces_dir"/*/; do
    [[ -d $folder ]] && available+="${available:+, }$(basename "$folder")"
  done
  die "$EXIT_USAGE" "no Space '$space' in $spaces_dir (available: ${available:-none})"
fi
if [[ -n $model_dir && ! -d $model_dir ]]; then
  die "$EXIT_USAGE" "--include-model: $model_dir is not a folder"
fi

# Where to push; resolved before staging so a missing setting fails fast.
if [[ -z $remote && -n ${HF_OWNER:-} ]]; then
  remote="https://huggingface.co/spaces/$HF_OWNER/$space"
fi
if [[ $remote =~ ://[^/@]*:[^/@]*@ ]]; then
  die "$EXIT_USAGE" "--remote must not carry credentials: put the token in HF_TOKEN instead"
fi
if [[ -n $remote && $remote != *://* && -d $remote ]]; then
  # git-lfs reaches a local repository only through a file:// URL, never a plain path.
  remote="file://$(cd "$remote" && pwd)"
fi
if [[ -z $remote && $dry_run -eq 0 ]]; then
  die "$EXIT_USAGE" "nowhere to push: set HF_OWNER (the Space's owner on the Hub) or pass --remote"
fi

if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $ROOT/.venv/bin/python ]] && PYTHON="$ROOT/.venv/bin/python"
fi
"$PYTHON" -c 'import yaml' 2>/dev/null \
  || die "$EXIT_FAILED" "$PYTHON cannot import yaml: set PYTHON to the project's interpreter"
if ((!dry_run)); then
  git lfs version >/dev/null 2>&1 \
    || die "$EXIT_FAILED" "git-lfs is not installed (apt-get install git-lfs / brew install git-lfs)"
fi

# --- Stage -----------------------------------------------------------------------------------
work_root="$(mktemp -d "${TMPDIR:-/tmp}/deploy-$space.XXXXXX")"
if ((!dry_run)); then
  trap 'rm -rf "$work_root"' EXIT
fi
staged="$work_root/$space"

copy_tree "$space_dir" "$staged" ./tests ./benchmarks/results
[[ ! -e $staged/shared ]] \
  || die "$EXIT_FAILED" "$space_dir/shared exists: it would clash with the vendored shared/ package"
copy_tree "$ROOT/shared" "$staged/shared"
if [[ -n $model_dir ]]; then
  [[ ! -e $staged/model ]] \
    || die "$EXIT_FAILED" "$space_dir/model exists: it would clash with --include-model"
  copy_tree "$model_dir" "$staged/model" ./.cache
fi
if [[ ! -e $staged/.gitattributes ]]; then
  "$PYTHON" "$CHECKER" --print-gitattributes >"$staged/.gitattributes"
fi

# --- Check -----------------------------------------------------------------------------------
if ! problems="$("$PYTHON" "$CHECKER" "$staged" --spaces-dir "$spaces_dir" --name "$space")"; then
  printf '%s\n' "$problems" >&2
  ((dry_run)) && log "staged copy kept for inspection: $staged"
  die "$EXIT_CHECKS" "$space failed its checks (problems above); nothing was pushed"
fi

if ((dry_run)); then
  echo "Staged $space at: $staged"
  echo "Would push to: ${remote:-(nowhere yet: set HF_OWNER or pass --remote)}"
  echo "Files (lfs|git, bytes, path):"
  "$PYTHON" "$CHECKER" "$staged" --list
  exit 0
fi

# --- Commit and push -------------------------------------------------------------------------
export GIT_TERMINAL_PROMPT=0 # fail instead of prompting when credentials are missing
git_options=(-c lfs.locksverify=false)
if [[ -n ${HF_TOKEN:-} ]]; then
  # Single quotes on purpose: git's shell expands $HF_TOKEN from the environment, so only the
  # variable's name is ever in argv. The empty helper first drops other configured helpers.
  # shellcheck disable=SC2016
  git_options+=(
    -c credential.helper=
    -c 'credential.helper=!f() { test "$1" = get || exit 0; echo username=hf_user; echo "password=$HF_TOKEN"; }; f'
  )
fi
g() { git "${git_options[@]}" "$@"; }

repo="$work_root/repo"
if ! heads="$(g ls-remote --heads "$remote")"; then
  die "$EXIT_FAILED" "cannot read $remote: check that the Space repository exists" \
    "(hf repos create OWNER/$space --type space --sdk gradio) and that HF_TOKEN may write to it"
fi
if grep -q "refs/heads/$BRANCH\$" <<<"$heads"; then
  # Weights already on the remote are not downloaded: unchanged ones keep the same pointer.
  GIT_LFS_SKIP_SMUDGE=1 g clone --quiet --depth 1 --branch "$BRANCH" "$remote" "$repo"
  find "$repo" -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {} +
else
  log "the remote has no '$BRANCH' branch yet: pushing the first commit"
  git init --quiet --initial-branch "$BRANCH" "$repo"
  git -C "$repo" remote add origin "$remote"
fi
git -C "$repo" lfs install --local >/dev/null
cp -a "$staged/." "$repo/"
g -C "$repo" add --all

if git -C "$repo" rev-parse --verify --quiet HEAD >/dev/null \
  && git -C "$repo" diff --cached --quiet; then
  log "nothing to deploy: $remote already has this exact tree"
  exit 0
fi

if [[ -z $message ]]; then
  message="Deploy $space"
  if revision="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"; then
    message+=" from monorepo $revision"
    if [[ -n "$(git -C "$ROOT" status --porcelain -- "$space_dir" shared 2>/dev/null)" ]]; then
      message+=" (with uncommitted changes)"
    fi
  fi
fi
identity=()
git -C "$repo" config user.name >/dev/null || identity+=(-c "user.name=$FALLBACK_NAME")
git -C "$repo" config user.email >/dev/null || identity+=(-c "user.email=$FALLBACK_EMAIL")
g ${identity[@]+"${identity[@]}"} -C "$repo" commit --quiet --message "$message"

if ! g -C "$repo" push --quiet origin "HEAD:refs/heads/$BRANCH"; then
  die "$EXIT_FAILED" "push to $remote failed: if the remote moved on meanwhile, run again;" \
    "if it was refused, check that HF_TOKEN has write access"
fi
log "deployed $space to $remote ($(git -C "$repo" rev-parse --short HEAD))"
