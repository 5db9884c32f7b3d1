-- Run once by the postgres image on an empty data volume (docker-compose.yml): the Machine database beside
-- Airflow's metadata database, owned by the same user. `init` then migrates both.
CREATE DATABASE openaddr OWNER airflow;
