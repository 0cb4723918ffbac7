#!/usr/bin/env bash
# `make indent` / `make indent-check`: format the C sources as pgindent
# formats PostgreSQL's (docs/development.md#formatting).
#
#   scripts/indent.sh          rewrite src/*.c and src/*.h in place
#   scripts/indent.sh --check  change nothing; print the diff and exit 1 when
#                              a file is not formatted
#
# First it regenerates src/typedefs.list: every typedef name in the debug
# information of the built objects (src/*.o, persona's own types and the
# PostgreSQL and C library types the code uses), the way PostgreSQL's
# src/tools/find_typedef does, plus `bool` (a macro to the debugger). The
# caller (make) builds the objects first.
#
# Then it formats with pgindent when one is on PATH (from a PostgreSQL source
# tree: src/tools/pgindent/pgindent), else with pg_bsd_indent (Debian package
# pg-bsd-indent, version 2.1.1: the indent PostgreSQL 15 is formatted with)
# run with pgindent's options, plus the two pgindent touches persona's code
# needs: block comments opening with "/* ---" stay as written, and a
# function's return type on its own line keeps one space before its "*".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TYPEDEFS=$ROOT/src/typedefs.list
# pgindent's options for pg_bsd_indent (PostgreSQL 15).
INDENT_OPTS=(-bad -bap -bbb -bc -bl -cli1 -cp33 -cdb -nce -d0 -di12 -nfc1 -i4 -l79 -lp -lpl -nip -npro -sac -tpg -ts4)

check=0
case ${1:-} in
--check) check=1 ;;
'') ;;
*) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

cd "$ROOT"
shopt -s nullglob
objects=(src/*.o)
files=(src/*.c src/*.h)
shopt -u nullglob
((${#objects[@]} > 0)) || { echo "indent: no src/*.o: run make first" >&2; exit 1; }
command -v objdump >/dev/null || { echo "indent: objdump not found (Debian package binutils)" >&2; exit 1; }

{
	echo bool
	objdump --dwarf=info "${objects[@]}" 2>/dev/null |
		awk '/\(DW_TAG_typedef\)/ { t = 1; next }
		     t && /DW_AT_name/     { print $NF; t = 0; next }
		     /Abbrev Number/       { t = 0 }'
} | LC_ALL=C sort -u >"$TYPEDEFS.tmp"
mv "$TYPEDEFS.tmp" "$TYPEDEFS"

if command -v pgindent >/dev/null; then
	if ((check)); then
		out=$(pgindent --typedefs="$TYPEDEFS" --show-diff "${files[@]}")
		[[ -z $out ]] || { printf '%s\n' "$out"; exit 1; }
	else
		pgindent --typedefs="$TYPEDEFS" "${files[@]}"
	fi
	exit 0
fi

if ! command -v pg_bsd_indent >/dev/null; then
	echo "indent: neither pgindent nor pg_bsd_indent is installed; install pg_bsd_indent with:" >&2
	echo "  sudo apt-get install -y pg-bsd-indent" >&2
	exit 1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/persona-indent.XXXXXX")
trap 'rm -rf -- "$TMP"' EXIT
status=0
for f in "${files[@]}"; do
	# Mark "/* ---" comments as "/*-" ones, which indent leaves alone.
	sed 's!/\* \+---!/*-PERSONA-KEEP---!g' "$f" >"$TMP/in.c"
	if ! pg_bsd_indent "${INDENT_OPTS[@]}" -U"$TYPEDEFS" "$TMP/in.c" "$TMP/out.c" 2>"$TMP/err" ||
		[[ -s $TMP/err ]]; then
		echo "indent: pg_bsd_indent failed on $f:" >&2
		cat "$TMP/err" >&2
		status=1
		continue
	fi
	sed -e 's!/\*-PERSONA-KEEP---!/* ---!g' \
		-e 's!^\([A-Za-z_][^ \t]*\)[ \t]\+\*$!\1 *!' "$TMP/out.c" >"$TMP/formatted.c"
	if cmp -s "$f" "$TMP/formatted.c"; then
		continue
	elif ((check)); then
		diff -u --label "$f" --label "$f (formatted)" "$f" "$TMP/formatted.c" || true
		status=1
	else
		cp "$TMP/formatted.c" "$f"
		echo "indent: formatted $f"
	fi
done
exit "$status"
