-- home_page: every surface of one user's home page, in display order, then rank.
-- Parameters: :user_id. Served by the unique index on (user_id, surface, rank).
SELECT surface, rank, app_id, score, reason, reason_app_id, model_version, variant,
       CAST(generated_for AS TEXT) AS generated_for
FROM recommendations
WHERE user_id = :user_id
ORDER BY CASE surface
             WHEN 'for_you' THEN 1
             WHEN 'because_you_liked' THEN 2
             WHEN 'trending_in_your_area' THEN 3
             WHEN 'new_for_you' THEN 4
             WHEN 'featured' THEN 5
             ELSE 9
         END,
         surface,
         rank
