-- similar_apps: the "similar apps" strip of an app page, by rank.
-- Parameters: :app_id, :limit.
SELECT rank, similar_app_id, score
FROM similar_apps
WHERE app_id = :app_id
ORDER BY rank
LIMIT :limit
