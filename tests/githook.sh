#!/bin/sh
# githook.sh - a post-receive hook that sends a real, signed push webhook
# to otacd for every updated ref, in the format of a forge: GitHub, GitLab
# or Gitea.  Installed by tests/test_git.c into a bare repository; the
# answers are appended to $OTACD_HOOK_LOG (one line each), and the last
# request is kept ($OTACD_HOOK_LOG.body / .headers) so a test can resend it.
#
# Environment: OTACD_HOOK_URL (http://127.0.0.1:PORT), OTACD_HOOK_PROVIDER,
# OTACD_HOOK_SECRET, OTACD_HOOK_REPO (full name), OTACD_HOOK_LOG.
set -eu
zero=0000000000000000000000000000000000000000
while read -r old new ref; do
	forced=false
	if [ "$old" != "$zero" ] && [ "$new" != "$zero" ] && ! git merge-base --is-ancestor "$old" "$new" 2>/dev/null; then
		forced=true
	fi
	delivery=$(cat /proc/sys/kernel/random/uuid)
	case "$OTACD_HOOK_PROVIDER" in
	gitlab)
		kind=push; event="Push Hook"
		case "$ref" in refs/tags/*) kind=tag_push; event="Tag Push Hook";; esac
		body=$(printf '{"object_kind":"%s","ref":"%s","before":"%s","after":"%s","checkout_sha":"%s","user_username":"tester","user_email":"tester@example.com","project":{"path_with_namespace":"%s","git_http_url":"file://%s"},"commits":[]}' \
			"$kind" "$ref" "$old" "$new" "$new" "$OTACD_HOOK_REPO" "$PWD")
		printf '%s' "$body" > "$OTACD_HOOK_LOG.body"
		printf 'X-Gitlab-Event: %s\nX-Gitlab-Event-UUID: %s\nX-Gitlab-Token: %s\n' "$event" "$delivery" "$OTACD_HOOK_SECRET" > "$OTACD_HOOK_LOG.headers"
		;;
	gitea)
		body=$(printf '{"ref":"%s","before":"%s","after":"%s","compare_url":"","commits":[],"repository":{"full_name":"%s","clone_url":"file://%s"},"pusher":{"login":"tester","email":"tester@example.com"}}' \
			"$ref" "$old" "$new" "$OTACD_HOOK_REPO" "$PWD")
		printf '%s' "$body" > "$OTACD_HOOK_LOG.body"
		sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$OTACD_HOOK_SECRET" -r | cut -d' ' -f1)
		printf 'X-Gitea-Event: push\nX-Gitea-Delivery: %s\nX-Gitea-Signature: %s\n' "$delivery" "$sig" > "$OTACD_HOOK_LOG.headers"
		;;
	*)
		deleted=false; [ "$new" = "$zero" ] && deleted=true
		body=$(printf '{"ref":"%s","before":"%s","after":"%s","created":false,"deleted":%s,"forced":%s,"base_ref":null,"compare":"","commits":[],"head_commit":null,"repository":{"full_name":"%s","clone_url":"file://%s"},"pusher":{"name":"tester","email":"tester@example.com"},"sender":{"login":"tester"}}' \
			"$ref" "$old" "$new" "$deleted" "$forced" "$OTACD_HOOK_REPO" "$PWD")
		printf '%s' "$body" > "$OTACD_HOOK_LOG.body"
		sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$OTACD_HOOK_SECRET" -r | cut -d' ' -f1)
		printf 'X-GitHub-Event: push\nX-GitHub-Delivery: %s\nX-Hub-Signature-256: sha256=%s\n' "$delivery" "$sig" > "$OTACD_HOOK_LOG.headers"
		;;
	esac
	set --
	while IFS= read -r h; do set -- "$@" -H "$h"; done < "$OTACD_HOOK_LOG.headers"
	answer=$(curl -s -w ' %{http_code}' -H 'Content-Type: application/json' "$@" \
		--data-binary @"$OTACD_HOOK_LOG.body" "$OTACD_HOOK_URL/hooks/$OTACD_HOOK_PROVIDER")
	printf '%s %s\n' "$ref" "$answer" >> "$OTACD_HOOK_LOG"
done
