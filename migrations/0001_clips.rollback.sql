DROP TABLE clip_plays_daily;
DROP TABLE clips;
