-- 0017: the parity matrix reads compared commits of a period from the
-- index alone (it held only at, and every row was then looked up in the
-- table: most of the matrix's time over a million jobs).
DROP INDEX parity_commits_compared;
CREATE INDEX parity_commits_compared ON parity_commits (at, org, repo, workflow, logical, sha, amd64, arm64)
	WHERE amd64 <> 0 AND arm64 <> 0;
