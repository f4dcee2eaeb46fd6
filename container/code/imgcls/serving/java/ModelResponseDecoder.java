package com.amazonaws.ml.mms.util.codec;

import com.amazonaws.ml.mms.util.messages.ModelWorkerResponse;
import com.amazonaws.ml.mms.util.messages.Predictions;
import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.ByteToMessageDecoder;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Decodes a worker's reply to the frontend; it comes first on the class path, so it replaces
 * multi-model-server 1.1.11's own decoder of the same name.
 *
 * <p>Why: the stock decoder reads each prediction's status code and header map without checking
 * that those bytes have arrived. When a reply (larger with batching) is split across socket reads
 * at that point, it throws, the frontend drops the connection, the worker exits and every request
 * of the batch gets a 500 "Worker died". Here any short read means: wait for more bytes, also inside
 * a prediction's header map (a split there was still fatal: seen once in a 5-minute soak).
 */
public class ModelResponseDecoder extends ByteToMessageDecoder {

    private final int maxBufferSize;

    public ModelResponseDecoder(int maxBufferSize) {
        this.maxBufferSize = maxBufferSize;
    }

    @Override
    protected void decode(ChannelHandlerContext ctx, ByteBuf in, List<Object> out) {
        in.markReaderIndex();
        ModelWorkerResponse response;
        try {
            response = readResponse(in);
        } catch (IndexOutOfBoundsException incomplete) {
            response = null;
        }
        if (response == null) {
            in.resetReaderIndex();
        } else {
            out.add(response);
        }
    }

    /** The whole reply, or null when part of it has not arrived yet. */
    private ModelWorkerResponse readResponse(ByteBuf in) {
        ModelWorkerResponse response = new ModelWorkerResponse();
        response.setCode(in.readInt());
        int length = CodecUtils.readLength(in, maxBufferSize);
        if (length == CodecUtils.BUFFER_UNDER_RUN) {
            return null;
        }
        response.setMessage(CodecUtils.readString(in, length));
        List<Predictions> predictions = new ArrayList<>();
        while ((length = CodecUtils.readLength(in, maxBufferSize)) != CodecUtils.END) {
            if (length == CodecUtils.BUFFER_UNDER_RUN) {
                return null;
            }
            Predictions prediction = new Predictions();
            prediction.setRequestId(CodecUtils.readString(in, length));
            String contentType = readText(in);
            if (contentType == null) {
                return null;
            }
            prediction.setContentType(contentType);
            prediction.setStatusCode(in.readInt());
            String reason = readText(in);
            if (reason == null) {
                return null;
            }
            prediction.setReasonPhrase(reason);
            length = CodecUtils.readLength(in, maxBufferSize);
            if (length == CodecUtils.BUFFER_UNDER_RUN) {
                return null;
            }
            Map<String, String> headers = readMap(in, length);
            if (headers == null) {
                return null;
            }
            prediction.setHeaders(headers);
            length = CodecUtils.readLength(in, maxBufferSize);
            if (length == CodecUtils.BUFFER_UNDER_RUN) {
                return null;
            }
            prediction.setResp(CodecUtils.read(in, length));
            predictions.add(prediction);
        }
        response.setPredictions(predictions);
        return response;
    }

    /** CodecUtils.readMap passes an under-run marker on as a length and throws: here it means "wait". */
    private Map<String, String> readMap(ByteBuf in, int entries) {
        Map<String, String> map = new HashMap<>();
        for (; entries > 0; entries--) {
            String key = readText(in);
            String value = key == null ? null : readText(in);
            if (value == null) {
                return null;
            }
            map.put(key, value);
        }
        return map;
    }

    private String readText(ByteBuf in) {
        int length = CodecUtils.readLength(in, maxBufferSize);
        return length == CodecUtils.BUFFER_UNDER_RUN ? null : CodecUtils.readString(in, length);
    }
}
