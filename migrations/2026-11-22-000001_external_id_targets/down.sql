DROP INDEX customers_external_id_idx;
