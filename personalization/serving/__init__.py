"""The serving database: migrations, atomic versioned publish, checks, rollback, reader role, Redis sink.

Apps read the stable views (``recommendations``, ``user_insights``, ``similar_apps``,
``recommended_categories``, ``search_personalization``, ``suggested_queries``);
each publish builds a new version behind them and switches all views in one
transaction. Entry points: :func:`personalization.serving.publish.publish`,
``validate_serving``, ``rollback`` and ``list_versions`` in the same module (not
re-exported here, so the name ``personalization.serving.publish`` stays the module).
"""
