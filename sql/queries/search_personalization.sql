-- search_personalization: one user's category boosts for search ranking and suggested queries.
-- Parameters: :user_id. Two result sets would need two round trips; one UNION keeps one.
SELECT 'boost' AS kind, category AS value, boost AS weight, NULL AS rank
FROM search_personalization
WHERE user_id = :user_id
UNION ALL
SELECT 'query' AS kind, query AS value, NULL AS weight, rank
FROM suggested_queries
WHERE user_id = :user_id
ORDER BY kind, rank, weight DESC, value
