-- recommended_categories: one user's category shelf, by rank.
-- Parameters: :user_id.
SELECT rank, category, score
FROM recommended_categories
WHERE user_id = :user_id
ORDER BY rank
