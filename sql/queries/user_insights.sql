-- user_insights: one user's insights (zero or one row).
-- Parameters: :user_id. primary_interests is JSON text.
SELECT user_id, segment, engagement_score, churn_risk, lifetime_value, primary_interests,
       next_best_action, best_notification_hour, notification_channel,
       notification_cap_per_week, model_version, CAST(generated_for AS TEXT) AS generated_for
FROM user_insights
WHERE user_id = :user_id
