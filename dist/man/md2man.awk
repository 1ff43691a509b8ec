# md2man.awk - the small subset of Markdown docs/*.md use, as man(7) roff:
# headings (## .SH, ### .SS; the "# title" line is dropped: the caller
# writes .TH), paragraphs, fenced code, "- " lists, tables (one .TP per
# row) and inline `code`, **bold**, [links](url).  Used by dist/man/mkman.sh
# so the man pages say what the docs say.
#
#   awk -v skip="For otacd developers" -f md2man.awk docs/pipeline.md
#
# skip: a "## " section left out (with its subsections); only: the one
# "## " section kept (without its heading: the caller names it).
function esc(s) {
	gsub(/\\/, "\\e", s)
	gsub(/→/, "\\(->", s); gsub(/←/, "\\(<-", s)
	gsub(/—/, "\\(em", s); gsub(/–/, "\\(en", s)
	gsub(/…/, "...", s); gsub(/×/, "\\(mu", s)
	gsub(/≤/, "\\(<=", s); gsub(/≥/, "\\(>=", s); gsub(/±/, "\\(+-", s)
	gsub(/−/, "\\-", s); gsub(/·/, "\\(md", s); gsub(/§/, "\\(sc", s)
	gsub(/’/, "'", s); gsub(/“|”/, "\"", s); gsub(/ /, " ", s)
	gsub(/µ/, "u", s)
	return s
}
# inline markup of a line already escaped
function inline(s,    out, i) {
	# [text](url) -> text
	while (match(s, /\[[^]]*\]\([^)]*\)/)) {
		t = substr(s, RSTART + 1, RLENGTH)
		sub(/\]\(.*/, "", t)
		s = substr(s, 1, RSTART - 1) t substr(s, RSTART + RLENGTH)
	}
	while (match(s, /\*\*[^*]+\*\*/))
		s = substr(s, 1, RSTART - 1) "\\fB" substr(s, RSTART + 2, RLENGTH - 4) "\\fR" substr(s, RSTART + RLENGTH)
	# *emphasis*: a word or words, not a glob's star
	while (match(s, /\*[A-Za-z(][A-Za-z() ]*[A-Za-z)]\*/))
		s = substr(s, 1, RSTART - 1) "\\fI" substr(s, RSTART + 1, RLENGTH - 2) "\\fR" substr(s, RSTART + RLENGTH)
	# code: bold, and breakable after its commas (long metric names)
	while (match(s, /`[^`]+`/)) {
		t = substr(s, RSTART + 1, RLENGTH - 2)
		gsub(/,/, ",\\:", t)
		s = substr(s, 1, RSTART - 1) "\\fB\\%" t "\\fR" substr(s, RSTART + RLENGTH)
	}
	return s
}
# a text line must not start with a control character
function line(s) {
	if (s ~ /^[.']/)
		s = "\\&" s
	print s
}
function cell(s) {
	sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s)
	return inline(esc(s))
}
BEGIN { code = 0; skipping = (only != ""); para = 0 }
/^```/ {
	if (skipping)
		next
	if (!code) { print ".PP"; print ".RS 4"; print ".nf"; code = 1 }
	else { print ".fi"; print ".RE"; code = 0; para = 1 }
	next
}
code {
	if (!skipping)
		line(esc($0))
	next
}
/^# / { next }
/^## / {
	title = substr($0, 4)
	skipping = (skip != "" && title == skip) || (only != "" && title != only)
	if (!skipping && only == "")
		print ".SH " toupper(inline(esc(title)))
	para = 0
	next
}
skipping { next }
/^### / { print ".SS " inline(esc(substr($0, 5))); para = 0; next }
/^\|[ -|]*\|$/ && /---/ { next }   # a table's rule
/^\|/ {
	n = split($0, c, "|")
	if (!intable) { intable = 1; header = 1 }
	if (header) { header = 0; next }  # the header row names the columns
	key = cell(c[2])
	rest = ""
	for (i = 3; i < n; i++) {
		v = cell(c[i])
		if (v != "" && v != "\\(em")
			rest = rest (rest == "" ? "" : "; ") v
	}
	if (length(key) < 60) {
		print ".TP"
		line(key)
		line(rest)
	} else {  # a .TP tag is never broken: a long one is a paragraph
		print ".PP"
		print ".na"
		line(key)
		print ".ad"
		print ".RS"
		line(rest)
		print ".RE"
	}
	next
}
{ intable = 0 }
/^[-*] / { print ".IP \\(bu 2"; line(inline(esc(substr($0, 3)))); para = 1; next }
/^[0-9]+\. / { sub(/^[0-9]+\. /, ""); print ".IP \\(bu 2"; line(inline(esc($0))); para = 1; next }
/^[ \t]*$/ { para = 0; next }
{
	if (!para) { print ".PP"; para = 1 }
	s = $0; sub(/^[ \t]+/, "", s)
	line(inline(esc(s)))
}
