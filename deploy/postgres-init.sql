-- Run once by the postgres image on an empty data folder (deploy/compose.yaml). The ledger uses the
-- database POSTGRES_DB creates (lethe); MLflow and Prefect get their own.
CREATE DATABASE mlflow OWNER lethe;
CREATE DATABASE prefect OWNER lethe;
