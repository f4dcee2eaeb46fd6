package com.amazonaws.ml.mms;

import com.amazonaws.ml.mms.http.ApiDescriptionRequestHandler;
import com.amazonaws.ml.mms.http.HttpRequestHandler;
import com.amazonaws.ml.mms.http.HttpRequestHandlerChain;
import com.amazonaws.ml.mms.http.InferenceRequestHandler;
import com.amazonaws.ml.mms.http.InvalidRequestHandler;
import com.amazonaws.ml.mms.http.ManagementRequestHandler;
import com.amazonaws.ml.mms.servingsdk.impl.PluginsManager;
import com.amazonaws.ml.mms.util.ConfigManager;
import com.amazonaws.ml.mms.util.ConnectorType;
import imgcls.serving.ConnectionGuard;
import io.netty.channel.Channel;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelPipeline;
import io.netty.handler.codec.http.HttpObjectAggregator;
import io.netty.handler.codec.http.HttpServerCodec;
import io.netty.handler.ssl.SslContext;

/**
 * Builds each connection's pipeline; first on the class path, it replaces multi-model-server
 * 1.1.11's class of the same name. The one difference: on the inference port a ConnectionGuard
 * sits between the HTTP codec and the aggregator, so it sees every request before MMS and every
 * answer (the aggregator's 413 included) before it leaves.
 */
public class ServerInitializer extends ChannelInitializer<Channel> {

    private final ConnectorType connectorType;
    private final SslContext sslCtx;

    public ServerInitializer(SslContext sslCtx, ConnectorType type) {
        this.sslCtx = sslCtx;
        this.connectorType = type;
    }

    @Override
    public void initChannel(Channel channel) {
        boolean inference = ConnectorType.BOTH.equals(connectorType)
                || ConnectorType.INFERENCE_CONNECTOR.equals(connectorType);
        boolean management = ConnectorType.BOTH.equals(connectorType)
                || ConnectorType.MANAGEMENT_CONNECTOR.equals(connectorType);
        ChannelPipeline pipeline = channel.pipeline();
        if (sslCtx != null) {
            pipeline.addLast("ssl", sslCtx.newHandler(channel.alloc()));
        }
        pipeline.addLast("http", new HttpServerCodec());
        if (inference) {
            pipeline.addLast("imgcls-guard", new ConnectionGuard());
        }
        pipeline.addLast("aggregator", new HttpObjectAggregator(ConfigManager.getInstance().getMaxRequestSize()));

        HttpRequestHandlerChain first = new ApiDescriptionRequestHandler(connectorType);
        HttpRequestHandlerChain last = first;
        if (inference) {
            last = last.setNextHandler(new InferenceRequestHandler(PluginsManager.getInstance().getInferenceEndpoints()));
        }
        if (management) {
            last = last.setNextHandler(new ManagementRequestHandler(PluginsManager.getInstance().getManagementEndpoints()));
        }
        last.setNextHandler(new InvalidRequestHandler());
        pipeline.addLast("handler", new HttpRequestHandler(first));
    }
}
