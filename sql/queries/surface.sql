-- surface: one surface of one user (e.g. the notification or search surface), by rank.
-- Parameters: :user_id, :surface, :limit.
SELECT rank, app_id, score, reason, reason_app_id, variant
FROM recommendations
WHERE user_id = :user_id AND surface = :surface
ORDER BY rank
LIMIT :limit
